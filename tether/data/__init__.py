"""Records, readers, validation, tokenisation with response masks, and collation.

From a file to a batch: `readers` (JSONL, JSON, Parquet, `datasets`, hub names, labeling
databases -> rows with their file:line), `records` (rows -> validated records, with load stats
and the eval split), one module per kind of record (`sft`, `preferences`, `prompts`,
`candidates`), `tokenize` (records -> token ids and loss masks), then `order`, `packing` and
`collate` (which examples make a step, micro-batches, padded tensors).
"""
