"""Generation backends behind one interface (`make_generator(...).generate(prompts, n, params)`).

base.py says what a backend is (`Generator`) and holds the types it takes and gives
(`SamplingParams`, `Generation`); each backend has its module (generate.py: Hugging Face
`generate`, CPU or GPU; static.py: tether's own decode loop, with decode.py's written-out step
for Llama-family models; vllm.py: vLLM on a GPU); sampling.py is how the built-in ones draw a
token; backends.py builds one by name, `auto` being static on a CPU and hf elsewhere. Trainers,
`tether sample` and the evaluations only see `SamplingParams` in and `Generation`s out, so a
faster backend is a new module implementing `Generator` plus its name in backends.py, without
touching them.
"""
