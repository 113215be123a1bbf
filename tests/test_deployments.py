"""The models people really run: bitsandbytes quantization, PEFT LoRA, accelerate dispatch and processes.

All real: bitsandbytes quantizes on the CPU, PEFT injects real LoRA layers, accelerate offloads a layer to
disk and `accelerate launch` starts two gloo processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import hf_batchspec
from tests.toolkit import left_pad, plain_greedy
from tests.tiny_models import build, perturbed

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17], [18], [19, 20, 21]]
NEW = 14


def check_rows(target, draft, prompts=PROMPTS, reference=None, **kwargs):
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=3,
                          max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None,
                          return_dict_in_generate=True, **kwargs)
    reference = reference or (lambda row, p: plain_greedy(target, p, NEW, None))
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == reference(row, prompt), f"row {row}"
    return out.spec_stats


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    # Layers at least as wide as bitsandbytes' 4-bit block (64): its CPU path (0.50.2) fails on narrower ones,
    # in plain transformers generate too.
    build("llama", hidden_size=64, intermediate_size=128).save_pretrained(path)
    return path


QUANT = {
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    # LLM.int8 with threshold 0 is batch-independent (the default 6.0 picks outlier columns over the batch)
    "int8": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0),
}


@pytest.mark.parametrize("quant", sorted(QUANT))
def test_quantized_target_and_draft(saved_llama, quant):
    load = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        saved_llama, quantization_config=QUANT[quant], device_map="cpu", dtype=torch.float32).eval()
    target = hf_batchspec.enable(load())
    assert "bitsandbytes" in type(target.model.layers[0].mlp.down_proj).__module__
    check_rows(target, perturbed(build("llama"), 0.05))  # plain draft
    check_rows(target, load(), batch_spec="eqspec")  # quantized draft (the same weights: agrees fully)


def test_lora_target_unmerged_merged_and_per_row_adapters():
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(build("llama"), LoraConfig(**lora)).eval()
    model.add_adapter("other", LoraConfig(**lora))
    assert hf_batchspec.enable(model) is model
    draft = perturbed(build("llama"), 0.05)
    check_rows(model, draft)  # generate through the PEFT wrapper, adapter unmerged
    assert any(plain_greedy(model, p, NEW, None) != plain_greedy(build("llama"), p, NEW, None) for p in PROMPTS)

    names = ["default", "other", "default", "__base__", "other"]

    def alone(row, prompt):
        return plain_greedy(model, prompt, NEW, None, adapter_names=[names[row]])

    # per-row adapters through exspec with 2 slots: rows enter and leave, each keeps its own adapter
    check_rows(model, draft, reference=alone, adapter_names=names, batch_spec="exspec", max_batch_size=2)

    model.merge_adapter()  # merged in place: same outputs, now from plain Linear weights
    check_rows(model, draft)
    merged = hf_batchspec.enable(model.merge_and_unload())
    check_rows(merged, draft)


def test_lora_draft_drafts_as_its_merged_weights():
    """A PEFT-wrapped draft (LoRA, unmerged) drafts through its base model, whose layers carry the adapter: the
    drafts, so the acceptance counts, are the same merged draft's, and every row equals plain greedy (before, the
    wrapper's forward signature, `**kwargs`, was refused as taking no `attention_mask`). A prompt-learning adapter,
    which lives in the wrapper's forward, is refused, naming it."""
    from peft import PromptTuningConfig

    target = hf_batchspec.enable(build("llama"))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(perturbed(build("llama"), 0.05), lora).eval()
    merged = get_peft_model(perturbed(build("llama"), 0.05), lora).eval()
    merged.load_state_dict(wrapped.state_dict())
    merged = merged.merge_and_unload()
    accepted = [check_rows(target, draft, batch_spec="exspec", max_batch_size=2).accepted_tokens.tolist()
                for draft in (wrapped, merged)]
    assert accepted[0] == accepted[1]
    plain = check_rows(target, perturbed(build("llama"), 0.05), batch_spec="exspec", max_batch_size=2)
    assert plain.accepted_tokens.tolist() != accepted[0], "the adapter changed no draft: the test shows nothing"
    tuned = get_peft_model(perturbed(build("llama"), 0.05), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                             num_virtual_tokens=2))
    ids, mask = left_pad(PROMPTS, 0)
    with pytest.raises(hf_batchspec.BatchSpecError, match="PromptTuningConfig"):
        target.generate(ids, attention_mask=mask, assistant_model=tuned, max_new_tokens=4, pad_token_id=0,
                        batch_spec="exspec")


def test_dispatched_target_with_disk_offload(saved_llama, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    target = AutoModelForCausalLM.from_pretrained(saved_llama, device_map=device_map, offload_folder=str(tmp_path))
    assert hasattr(target.model.layers[1], "_hf_hook")  # accelerate's offload hook is really there
    hf_batchspec.enable(target)
    check_rows(target.eval(), perturbed(build("llama"), 0.05))


def test_early_exit_of_a_dispatched_target(saved_llama, tmp_path):
    """accelerate wraps the dispatched model's forward in an instance-level hook bound to it; the early-exit view
    must run its own, shorter stack (the shared layers keep their offload hooks)."""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    target = AutoModelForCausalLM.from_pretrained(saved_llama, device_map=device_map, offload_folder=str(tmp_path))
    assert "forward" in target.__dict__  # the hook this is about is really there
    target = hf_batchspec.enable(target.eval())
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_early_exit=1, num_assistant_tokens=3, max_new_tokens=NEW,
                          do_sample=False, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, NEW, None), f"row {row}"
    assert out.spec_stats.draft_forward_calls > 0


def test_accelerate_launch_two_processes_equals_one(tmp_path):
    script = ROOT / "examples" / "multiprocess.py"
    # this checkout's package first: the example imports hf_batchspec.cli, and an installed copy may be another tree
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    multi, single = tmp_path / "multi.json", tmp_path / "single.json"
    run = lambda cmd: subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # noqa
    result = run(launch + [str(script), "--output", str(multi)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    result = run([sys.executable, str(script), "--single", "--output", str(single)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(multi.read_text()) == json.loads(single.read_text())


@pytest.mark.parametrize("placement", ["position_table_on_disk", "everything_on_disk"])
def test_dispatched_encoder_decoder_with_disk_offload(tmp_path, placement):
    """A BART target whose decoder position table, or whole model, accelerate offloads to disk: the per-row
    position lookup reads the table through the offload hook's map (its forward hook ran after the weight went back
    to `meta`: a crash), and the inputs go to the embedding's execution device (not `meta`). Each row equals the
    dispatched model's greedy of its source alone."""
    from transformers import AutoModelForSeq2SeqLM

    from tests import seq2seq_models as S

    base = S.target("bart")
    base.save_pretrained(tmp_path / "bart")
    if placement == "position_table_on_disk":
        device_map = {name: "cpu" for name in ("model.shared", "model.encoder", "lm_head", "final_logits_bias")}
        device_map.update({f"model.decoder.{name}": "cpu" for name, _ in base.model.decoder.named_children()})
        device_map["model.decoder.embed_positions"] = "disk"
        kwargs = dict(device_map=device_map)
    else:
        kwargs = dict(device_map="auto", max_memory={"cpu": "150KB"})
    target = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bart", offload_folder=str(tmp_path / "offload"),
                                                   **kwargs).eval()
    assert target.model.decoder.embed_positions.weight.device.type == "meta"  # really offloaded
    target.generation_config.num_beams = 1
    hf_batchspec.enable(target)
    ids, mask = S.sources([5, 11, 7, 3], seed=4)
    out = target.generate(ids, attention_mask=mask, assistant_model=S.draft(base), batch_spec="exspec",
                          max_batch_size=2, max_new_tokens=8, do_sample=False, speculation="always")
    expected = [target.generate(ids[i:i + 1, : int(mask[i].sum())], max_new_tokens=8, do_sample=False)[0]
                for i in range(len(ids))]
    assert [row[: len(e)].tolist() for row, e in zip(out, expected)] == [e.tolist() for e in expected]
