"""End-to-end jobs that chain the stages: the quickstart (train -> checkpoint -> eval -> export on SmolLM2) and the
mini reproduction of the paper's before/after experiment."""
