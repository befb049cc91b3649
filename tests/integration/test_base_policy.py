"""A reduced base-policy build: it loads in transformers (and vLLM), generates, is cached and reproducible."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.environment import OFFLINE_ENV
from tasks.arithmetic import build_base
from tasks.arithmetic.build_base import BasePolicyConfig, ensure_base_policy
from tasks.arithmetic.cache import STAMP_FILE
from tasks.arithmetic.generate import ArithmeticDataConfig
from tasks.arithmetic.tokenizer import IM_END

TINY = BasePolicyConfig(
    data=ArithmeticDataConfig(train_size=60, valid_size=12, test_size=24),
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    max_position_embeddings=128,
    sft_pool_per_level=40,
    sft_steps=6,
    batch_size=8,
    warmup_steps=1,
    stop_accuracy=0.0,  # the first probe stops the warm-start
    probe_every=3,
    probe_per_level=2,
)
PROMPT = [{"role": "user", "content": "Compute 47 + 85."}]

pytestmark = pytest.mark.slow  # builds the base policy (a reduced one, but the whole pipeline)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_base_policy(tmp_path_factory.mktemp("policy") / "base", TINY)


def test_checkpoint_is_a_standard_hf_directory(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert expected | {"tokenizer_config.json", "chat_template.jinja", STAMP_FILE} <= names
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(IM_END) == tokenizer.eos_token_id
    report = json.loads((model_dir / build_base.BUILD_REPORT_FILE).read_text())
    assert report["vocab_size"] == len(tokenizer)
    assert report["sft_steps_run"] == 3 and [p["step"] for p in report["probes"]] == [3]
    assert set(report["probes"][0]) == {"step", "overall"} | {f"L{level}" for level in TINY.data.levels}
    assert not [p for p in model_dir.parent.iterdir() if ".tmp-" in p.name]


def test_loads_in_transformers_and_generates(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert (
        sum(p.numel() for p in model.parameters())
        == json.loads((model_dir / build_base.BUILD_REPORT_FILE).read_text())["parameters"]
    )
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new_tokens) <= 12
    assert isinstance(tokenizer.decode(new_tokens, skip_special_tokens=True), str)


def test_cache_hit_does_not_rebuild(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = (model_dir / "model.safetensors").stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("rebuilt although the config did not change")

    monkeypatch.setattr(build_base, "build_base_policy", fail)
    assert ensure_base_policy(model_dir, TINY) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_same_config_gives_same_weights_and_a_new_config_rebuilds(model_dir: Path, tmp_path: Path) -> None:
    again = ensure_base_policy(tmp_path / "again", TINY)
    first, second = load_file(model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    changed = ensure_base_policy(tmp_path / "again", dataclasses.replace(TINY, seed=1))
    assert json.loads((changed / STAMP_FILE).read_text())["config"]["seed"] == 1
    third = load_file(changed / "model.safetensors")
    assert not all(torch.equal(first[name], third[name]) for name in first)


VLLM_SCRIPT = textwrap.dedent(
    """
    import sys, json
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    model_dir = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 47 + 85."}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=16)
    out = llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    import torch
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    print(json.dumps({"vllm": list(out.token_ids), "transformers": ref}))
    """
)


def test_loads_in_vllm_and_matches_transformers_greedy(model_dir: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **OFFLINE_ENV,
        "VLLM_HOST_IP": "127.0.0.1",
        "TMPDIR": str(tmp_path),  # vLLM leaves files in the temp folder
    }
    done = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["vllm"] and result["vllm"] == result["transformers"]
