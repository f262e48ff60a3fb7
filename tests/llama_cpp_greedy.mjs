// Greedy continuations and tokenizations by llama.cpp (node-llama-cpp's prebuilt CPU build).
// usage: node llama_cpp_greedy.mjs MODEL.gguf '{"prompts": [[ids...], ...], "max_tokens": N, "texts": ["..."]}'
// (run with the folder holding node_modules/node-llama-cpp as the working directory).
// Prints one JSON line: {"continuations": [[ids...], ...], "tokens": [[ids...], ...], "eos": [ids]}.
// Each continuation is greedy (temperature 0, no repeat penalty), at most max_tokens long, and ends
// at (and includes) the first end-of-generation token.
import path from "node:path";
import {pathToFileURL} from "node:url";

const [modelPath, requestText] = process.argv.slice(2);
const request = JSON.parse(requestText);
const entry = path.join(process.cwd(), "node_modules", "node-llama-cpp", "dist", "index.js");
const {getLlama} = await import(pathToFileURL(entry).href);

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
// threads: the physical cores (llama.cpp's default of more threads than cores crawls on a loaded machine)
const context = await model.createContext({contextSize: request.context_size ?? 256, sequences: 1,
                                          threads: request.threads ?? llama.cpuMathCores});
const sequence = context.getSequence();
const eog = new Set([model.tokens.eos, model.tokens.eot].filter((t) => t != null));
const continuations = [];
for (const prompt of request.prompts ?? []) {
    await sequence.clearHistory();
    const out = [];
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
        out.push(token);
        if (out.length >= request.max_tokens || eog.has(token) || model.isEogToken?.(token)) break;
    }
    continuations.push(out);
}
const tokens = (request.texts ?? []).map((text) => model.tokenize(text, true));
console.log(JSON.stringify({continuations, tokens, eos: [...eog]}));
await context.dispose();
await model.dispose();
await llama.dispose();
process.exit(0);
