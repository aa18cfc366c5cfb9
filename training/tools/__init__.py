"""Data tools that prepare training sets with a model in the loop, run as `python -m training.tools.<name>`:

- `record_prompts`: run the LLMGA assistant once over an image folder and store its generation prompts as a JSONL
  of {"image", "caption", ...}, the stage-2 training data the paper makes without rerunning the MLLM (resumable).
- `refinement_pairs`: build short -> detailed prompt pairs in the released `T2I/train.json` format from any
  captioned set, with a pluggable captioner.
"""
