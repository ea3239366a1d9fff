"""Generation backends behind one interface (`make_generator(...).generate(prompts, n, params)`).

Trainers and `tether sample` only see `SamplingParams` in and `Generation`s out, so a faster
backend (vLLM on a GPU) can be added here without touching them. Today: Hugging Face
`generate` (CPU or GPU).
"""
