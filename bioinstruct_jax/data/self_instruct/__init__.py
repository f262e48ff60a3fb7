"""`python -m bioinstruct_jax.data.generate`: BioInstruct's self-instruct loop with an
OpenAI-compatible model, and the labelling pass (also alone: `--label-only`).

Each request shows the model three seed tasks drawn at random (an RNG seeded by the run seed and
the request number) as items 1-3 of a numbered `Instruction / Input / Output` list under the
paper's rules, and asks it to continue from item 4 up to 20. Replies are parsed item by item (a
malformed item is counted and skipped). A task joins the pool when it passes the heuristics
(3-150 words, no media words, an output that is not empty and not the input repeated) and its
instruction has ROUGE-L < 0.7 with every instruction already in the pool (seeds included).

Kill safety (SIGKILL or Ctrl-C at any moment loses no accepted task and writes none twice):
requests run in a thread pool, but their replies are absorbed in request order, one at a time, in
the main thread, so a run's output depends only on the replies, not on their timing. Absorbing
request i commits it in two steps: first `<output stem>.progress.json` is replaced atomically with
the counters after request i *and the tasks it accepted* (with their ids), then those tasks are
appended to the output JSONL and fsynced. A rerun with the same --out reads the progress file,
drops a torn last line, appends whatever of the recorded tasks the file lacks, rebuilds the ROUGE
pool from the file and goes on with request i+1. A kill before the progress file is replaced
leaves request i unabsorbed: the rerun asks it again.

Labelling is a separate, resumable pass (`bioinstruct_jax.data.labels`) over the finished file:
labels go to `<output stem>.labels.jsonl` as they arrive, then the output is rewritten (atomically)
with each task's category. A task the model fails to label keeps an empty category and is counted
(`label_failures`, `unlabelled`), never put into "other"; the next run asks for it again. With
`--no-label` a category the model wrote in its reply (`N. Category:`) is kept instead.

`--label-only --input FILE [--out LABELS.jsonl]` runs only the labelling pass on an existing
instruction file (JSON array or JSON lines, e.g. the published 25K file) and writes the labels file
the TFDS builder's `labels_file` reads. `<output stem>.summary.json` is written at the end (and on
Ctrl-C). The API key comes only from the environment and never reaches a message or a file (see
`bioinstruct_jax.data.llm_client`).

Modules: `prompt` (the request text), `reply` (parsing replies into tasks), `settings` (the run's
config), `state` (progress file, summary, recovery), `run` (the loop and the label-only pass), `cli`.
"""
