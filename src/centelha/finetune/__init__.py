"""Fine-tuning (issue 12, in progress): the data each objective reads.

One module per idea: `classify_data` (labelled texts for a classifier: TSV/CSV/JSONL,
stratified split, class weights), `classify_metrics` (accuracy, per-class P/R/F1, the
confusion matrix and its plot), `sft_data` (chat conversations and the assistant-token
mask). LoRA is its own package, `centelha.lora`. The objectives and the shared training
loop come on top of these.
"""
