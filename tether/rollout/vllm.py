"""vLLM as the generation backend (`backend=vllm`): GPUs only, colocated with training.

The engine runs inside the training process on the same GPU, holding `gpu_memory_utilization`
of its memory. It is built once from the policy's starting weights; after every update the
policy's current weights are copied into it in memory (`sync`), so no iteration reloads the
model from disk. Sampling is plain temperature + top-p, as with the `hf` backend, and responses
end at EOS, so PPO's log-probs (recomputed by the policy) describe what was sampled.

vLLM computes with its own kernels (and in bf16 by default), so its policy is not exactly the
trainer's: `matches_trainer` is False, and each sample carries the log-probs vLLM gave its
tokens, for the trainer to measure and correct the difference (rollout.is_correction). The
engine is built with logprobs_mode=processed_logprobs (vLLM >= 0.10.2): log-probs after the
temperature and after top-p, which renormalises them to the nucleus. With top_p = 1 that is
exactly log softmax(logits / temperature), the trainer's quantity; with top_p < 1 it is not,
and no log-probs are returned.

Checked on CPU only for its error: a machine without CUDA or without the vllm package gets one
clear line. On a GPU machine `python -m bench generation` compares it with `hf`, and
`python -m bench gpu-check` runs it with the rest of the GPU checks.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from tether.errors import UserError
from tether.rollout.base import Generation, Generator, SamplingParams, stream_seed


def require_vllm() -> None:
    if not torch.cuda.is_available():
        raise UserError("backend=vllm needs a CUDA GPU (vLLM does not generate on the CPU); "
                        "use backend=hf here")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError("backend=vllm needs the vllm package: pip install vllm (on a CUDA "
                        "machine, with a matching torch)") from None


class VLLMGenerator(Generator):
    matches_trainer = False

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 model_path: str, bf16: bool = True, gpu_memory_utilization: float = 0.3,
                 max_model_len: int = 2048, seed: int = 0):
        require_vllm()
        from vllm import LLM

        self.model, self.tokenizer = model, tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path),
                       dtype="bfloat16" if bf16 else "float32", seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enable_prefix_caching=True,
                       logprobs_mode="processed_logprobs")

    def sync(self, model: torch.nn.Module | None = None) -> None:
        """Copy the policy's current weights into the engine, in GPU memory."""
        from tether.models.lora import is_lora

        model = model or self.model
        if is_lora(model):  # the engine holds plain weights: merge a copy's view
            weights = model.merge_and_unload(progressbar=False, safe_merge=False).state_dict()
        else:
            weights = model.state_dict()
        engine_model = self._engine_model()
        engine_model.load_weights(weights=((n, t.detach()) for n, t in weights.items()))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def _engine_model(self) -> torch.nn.Module:
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model"):
            obj = engine
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                continue
        raise UserError("this vllm version does not expose its model in-process; run it with "
                        "VLLM_ENABLE_V1_MULTIPROCESSING=0, or use backend=hf")

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None, first_sample: int = 0) -> list[list[Generation]]:
        """As HFGenerator.generate; with `seed` each prompt is a request with a seed of its
        own, named by its place in the whole batch, so a batch split over processes draws
        what one process would (vLLM's own streams: not the samples `hf` draws)."""
        import vllm

        # Renormalised to the nucleus below top_p = 1: not what the trainer computes.
        with_logprobs = params.top_p == 1.0
        sampling = [vllm.SamplingParams(
            n=n, temperature=params.temperature, top_p=params.top_p, top_k=-1,
            max_tokens=params.max_new_tokens, stop_token_ids=[self.eos_token_id],
            skip_special_tokens=False, logprobs=0 if with_logprobs else None,
            seed=None if seed is None else stream_seed(seed, first_sample + i * n))
            for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling,
                                    use_tqdm=False)
        results = []
        for prompt, out in zip(prompts, outputs, strict=True):
            samples = []
            for c in out.outputs:
                ids = list(c.token_ids)
                finished = c.finish_reason == "stop" and self.eos_token_id in ids
                if finished:
                    ids = ids[:ids.index(self.eos_token_id) + 1]
                # logprobs=0: step i's dict holds the token sampled there alone
                logprobs = [c.logprobs[i][token].logprob for i, token in enumerate(ids)] \
                    if with_logprobs else None
                samples.append(Generation(list(prompt), ids, finished, logprobs))
            results.append(samples)
        return results
