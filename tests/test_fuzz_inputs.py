"""Fuzzed calls: inputs of random dtypes, shapes and values, masks of other shapes, values or with holes, budgets at
0, 1 and huge, knobs with wrong types. Each call is either served, equal to plain greedy of each row's prompt alone
(trimmed at EOS), or refused with the library's own error (`BatchSpecError`) before any forward of either model; no
other exception may escape. The default suite draws a bounded number of calls; `tox -e explore` (or
HYPOTHESIS_PROFILE=explore FUZZ_EXAMPLES=2000) draws many more."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from hf_batchspec.errors import BatchSpecError
from tests.toolkit import ForwardCount, plain_greedy
from tests.tiny_models import VOCAB, build

TARGET = hf_batchspec.enable(build("llama"))
DRAFT = build("llama", seed=5)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))

# each knob: (values the call may have, wrong ones: types, ranges)
KNOBS = {
    "max_new_tokens": ([1, 3, 6], [0, -1, 2.5, "3", True, 10**12]),
    "num_assistant_tokens": ([1, 3], [0, -2, 2.0, "2", True]),
    "max_batch_size": ([1, 2, 3], [0, -1, 1.5, "2", True]),
    "do_sample": ([False, True], ["yes", 1]),
    "eos_token_id": ([None, 1, [1, 2], 7], [-1, VOCAB + 10, "x", [], 1.5]),
    "pad_token_id": ([0, 3], [-1, VOCAB + 5, "p", 2.0]),
    "sort_by_length": ([True, False], ["yes", 1]),
    "speculation": (["always", "auto"], ["never", 3]),
    "temperature": ([0.7, 1.0], [0.0, -1.0, "hot"]),
}
SOURCES = {"assistant_model": ([None], []), "prompt_lookup_num_tokens": ([2, 3], [0, -1, "2", 1.5]),
           "assistant_early_exit": ([1], [0, 2, "1", 1.5])}
DTYPES = ([torch.long, torch.int32], [torch.int16, torch.int8, torch.uint8, torch.float32, torch.bool])


def pick(draw, values: tuple[list, list], wrong: bool, label: str):
    """A valid value, or with `wrong` one of either list."""
    return draw(st.sampled_from(values[0] + values[1] if wrong else values[0]), label=label)


@st.composite
def calls(draw):
    """Half the calls valid (so that serving is checked against plain greedy), half with something wrong drawn in
    any part: the ids' dtype, shape or values, the mask, a knob, the draft source or batch_spec."""
    wrong = draw(st.booleans(), label="wrong")
    rows = draw(st.integers(0 if wrong else 1, 4), label="rows")
    width = draw(st.integers(0 if wrong else 1, 7), label="width")
    low, high = (-2, VOCAB + 2) if wrong else (3, VOCAB - 1)
    values = draw(st.lists(st.integers(low, high), min_size=rows * width, max_size=rows * width), label="ids")
    ids = torch.tensor(values, dtype=torch.long).view(rows, width).to(pick(draw, DTYPES, wrong, "dtype"))
    shape = draw(st.sampled_from(["2d", "2d", "2d", "1d", "3d"] if wrong else ["2d"]), label="shape")
    ids = ids.flatten() if shape == "1d" else ids.unsqueeze(-1) if shape == "3d" else ids
    kwargs = {}
    kinds = ["left", "left", "ones"] + (["none", "random", "twos", "wrong_shape", "float"] if wrong else [])
    mask_kind = draw(st.sampled_from(kinds), label="mask")
    if mask_kind != "none" and ids.dim() == 2:
        lengths = draw(st.lists(st.integers(0 if wrong else 1, width), min_size=rows, max_size=rows),
                       label="lengths")
        mask = torch.zeros(rows, width, dtype=torch.long)
        for row, n in enumerate(lengths):
            mask[row, width - n:] = 1
        if mask_kind == "ones":
            mask = torch.ones(rows, width, dtype=torch.long)
        elif mask_kind == "random":
            bits = draw(st.lists(st.integers(0, 1), min_size=rows * width, max_size=rows * width), label="bits")
            mask = torch.tensor(bits, dtype=torch.long).view(rows, width)
        elif mask_kind == "twos":
            mask = mask * 2
        elif mask_kind == "wrong_shape":
            mask = torch.ones(rows, width + 1, dtype=torch.long)
        elif mask_kind == "float":
            mask = mask.float()
        kwargs["attention_mask"] = mask
    sources = draw(st.lists(st.sampled_from(sorted(SOURCES)), min_size=1, max_size=2 if wrong else 1, unique=True),
                   label="sources")
    for name in sources:
        kwargs[name] = DRAFT if name == "assistant_model" else pick(draw, SOURCES[name], wrong, name)
    for name in draw(st.lists(st.sampled_from(sorted(KNOBS)), max_size=5, unique=True), label="knobs"):
        kwargs[name] = pick(draw, KNOBS[name], wrong, name)
    if kwargs.get("do_sample") is not True:
        kwargs.pop("temperature", None)  # (transformers warns about a temperature without sampling)
    kwargs.setdefault("max_new_tokens", 4)
    strategies = ["exspec", "eqspec", None] + (["fast", 3] if wrong else [])
    kwargs["batch_spec"] = draw(st.sampled_from(strategies), label="batch_spec")
    if kwargs["batch_spec"] is None and rows == 1:  # transformers' own path serves one row without batch_spec
        kwargs["batch_spec"] = "exspec"
    if kwargs["batch_spec"] == "eqspec" and not wrong:
        kwargs.pop("max_batch_size", None), kwargs.pop("sort_by_length", None)  # exspec's options
    return ids, kwargs


def _prompt(ids: torch.Tensor, mask: torch.Tensor | None, row: int) -> list[int]:
    tokens = ids[row].tolist()
    return tokens if mask is None else [t for t, m in zip(tokens, mask[row].tolist()) if m]


@settings(max_examples=EXAMPLES)
@given(call=calls())
def test_a_fuzzed_call_is_served_exactly_or_refused_by_us_before_any_forward(call):
    ids, kwargs = call
    with ForwardCount(TARGET, DRAFT) as forwards:
        try:
            out = TARGET.generate(ids, **kwargs)
        except BatchSpecError:
            assert not forwards, "refused after a forward pass ran"
            return
        except Exception as error:  # noqa: BLE001 - the property: nothing but our own error escapes
            pytest.fail(f"{type(error).__name__} escaped: {error}")
    if kwargs.get("do_sample") is True:
        assert out.shape[0] == ids.shape[0]
        return
    eos = kwargs.get("eos_token_id", TARGET.generation_config.eos_token_id)
    eos = tuple(eos) if isinstance(eos, list) else (eos,) if eos is not None else None
    mask = kwargs.get("attention_mask")
    for row in range(ids.shape[0]):
        expected = plain_greedy(TARGET, _prompt(ids.long(), mask, row), kwargs["max_new_tokens"], eos or None)
        assert out[row, ids.shape[1]: ids.shape[1] + len(expected)].tolist() == expected, (row, kwargs)
