"""Generation backends behind one interface (`make_generator(...).generate(prompts, n, params)`).

base.py says what a backend is (`Generator`) and holds the types it takes and gives
(`SamplingParams`, `Generation`); each backend has its module (generate.py: Hugging Face
`generate`, CPU or GPU; vllm.py: vLLM on a GPU); backends.py builds one by name. Trainers and
`tether sample` only see `SamplingParams` in and `Generation`s out, so a faster backend is a new
module implementing `Generator` plus its name in backends.py, without touching them.
"""
