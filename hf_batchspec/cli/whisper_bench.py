"""`hf-batchspec bench --whisper`: batched speculative transcription against transformers' Whisper options.

Rows, on the same inputs and token budget: Whisper's own greedy at batch 1 and at batch B, its batch-1 assisted
generation with the draft (transformers refuses assisted generation at batch > 1), and ours at batch B (EXSPEC with
a constant k, and with the library's defaults); with `--compile`, ours compiled beside Whisper's greedy on a static
cache with `compile_config` (transformers' compiled decoding). Every row of every method is checked against
Whisper's greedy of that input alone (token ids through EOS). Columns: tokens/s, tokens per round (ours), audio
seconds transcribed per second, exact rows.

Without `--target/--draft`, the pair is a synthetic layer-skip one built in seconds from configs: a target with
whisper-small's decoder (12 layers, d_model 768, 51865 tokens) and a 1-layer encoder (its cost, the same for every
method, kept small), random weights, its last decoder layers scaled down, and a decoder-only draft of its first 2
decoder layers reading its encoder output (distil-whisper's depth); the inputs are random log-mel features. Its
acceptance is what such a draft gets, not a distilled draft's on speech: it measures what batching and the rounds
cost, and says nothing about a real pair's acceptance. `--target` and
`--draft` take real checkpoints (a Whisper target, a `WhisperForCausalLM` or smaller Whisper draft).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import torch
from transformers import CompileConfig

from .. import enable
from .args import DTYPES

FRAMES_PER_SECOND = 100  # log-mel frames per audio second (Whisper's 10 ms hop)


@dataclass
class WhisperResult:
    method: str
    batch_size: int
    seconds: float
    tokens: int
    audio_seconds: float
    exact_rows: int
    rows: int
    tokens_per_round: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def layer_skip_pair(decoder_layers: int = 12, draft_layers: int = 2, d_model: int = 768, encoder_layers: int = 1,
                    seed: int = 0):
    """A random target with whisper-small's decoder (12 layers, d_model 768, 51865 tokens; a 1-layer encoder, whose
    cost every method pays alike) whose decoder layers past `draft_layers` are nearly residual, and a decoder-only
    draft of its first `draft_layers` decoder layers (distil-whisper's depth), with its embeddings, norm and head."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForCausalLM, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    heads = d_model // 64  # Whisper's head width at every size (tiny 384/6 .. large 1280/20)
    vocab = 51865
    eos, sot, en, transcribe, translate, nots = 50257, 50258, 50259, 50359, 50358, 50363
    config = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=d_model, encoder_layers=encoder_layers,
                           decoder_layers=decoder_layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                           encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_source_positions=1500,
                           max_target_positions=448, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                           decoder_start_token_id=sot, tie_word_embeddings=False, init_std=0.1,
                           suppress_tokens=None, begin_suppress_tokens=None)
    target = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in target.model.decoder.layers[draft_layers:]:
            for linear in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                linear.weight.mul_(0.05)
                linear.bias.mul_(0.05)
        target.proj_out.weight[eos:].mul_(0.3)  # special tokens and timestamps rare
    target.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos, max_length=448,
        lang_to_id={"<|en|>": en}, task_to_id={"transcribe": transcribe, "translate": translate},
        no_timestamps_token_id=nots, is_multilingual=True, suppress_tokens=[], begin_suppress_tokens=[220, eos])
    draft_config = copy.deepcopy(config)
    draft_config.decoder_layers = draft_layers
    draft = WhisperForCausalLM(draft_config).eval()
    for name in ("embed_tokens", "embed_positions", "layer_norm"):
        getattr(draft.model.decoder, name).load_state_dict(getattr(target.model.decoder, name).state_dict())
    for i, layer in enumerate(draft.model.decoder.layers):
        layer.load_state_dict(target.model.decoder.layers[i].state_dict())
    draft.proj_out.load_state_dict(target.proj_out.state_dict())
    draft.generation_config = copy.deepcopy(target.generation_config)
    return target, draft


def load_pair(target: str | None, draft: str | None, dtype: torch.dtype, device: str, d_model: int = 768,
              decoder_layers: int = 12):
    if target is None:
        pair = layer_skip_pair(decoder_layers=decoder_layers, d_model=d_model)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSpeechSeq2Seq

        if draft is None:
            raise SystemExit("--target needs --draft (a WhisperForCausalLM or a smaller Whisper)")
        loaded = AutoModelForSpeechSeq2Seq.from_pretrained(target, torch_dtype=dtype)
        try:
            assistant = AutoModelForSpeechSeq2Seq.from_pretrained(draft, torch_dtype=dtype)
        except ValueError:  # a decoder-only draft (distil-whisper's kind)
            assistant = AutoModelForCausalLM.from_pretrained(draft, torch_dtype=dtype)
        pair = loaded.eval(), assistant.eval()
    return tuple(model.to(device=device, dtype=dtype) for model in pair)


def random_features(model, count: int, seed: int, dtype, device) -> tuple[torch.Tensor, list[float]]:
    """`count` inputs of random log-mel features, 5 to 30 s of "audio" each, zero-padded to the 30 s window as
    Whisper's feature extractor pads them; returns ([count, bins, frames], audio seconds per input)."""
    generator = torch.Generator().manual_seed(seed)
    window = 2 * model.config.max_source_positions
    features = torch.zeros(count, model.config.num_mel_bins, window)
    seconds = []
    for row in range(count):
        frames = int(torch.randint(window // 6, window + 1, (1,), generator=generator))
        features[row, :, :frames] = torch.randn(model.config.num_mel_bins, frames, generator=generator)
        seconds.append(frames / FRAMES_PER_SECOND)
    return features.to(device=device, dtype=dtype), seconds


def trimmed(row: torch.Tensor, eos: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos)] if eos in ids else ids


def run(args) -> list[WhisperResult]:
    dtype = DTYPES[args.dtype]
    target, draft = load_pair(args.target, args.draft, dtype, args.device, args.d_model, args.decoder_layers)
    enable(target)
    features, seconds_of_audio = random_features(target, args.num_inputs, 0, dtype, args.device)
    eos = target.generation_config.eos_token_id
    common = dict(max_new_tokens=args.max_new_tokens, language="en", task="transcribe")

    def once(batch, call, per_input: bool):  # (rows trimmed at EOS, seconds, our calls' statistics)
        stats = []

        def generate(f):
            target.batch_spec_stats = None
            out = call(f)
            if target.batch_spec_stats is not None:  # set by our calls only
                stats.append(target.batch_spec_stats)
            return out

        start = time.perf_counter()
        if per_input:
            rows = [trimmed(generate(features[i:i + 1])[0], eos) for i in range(len(features))]
        else:
            rows = [trimmed(row, eos) for chunk in range(0, len(features), batch)
                    for row in generate(features[chunk:chunk + batch])]
        return rows, time.perf_counter() - start, stats

    plans = [("hf-greedy", 1, lambda f: target.generate(f, **common))]
    for batch in args.batch_sizes:
        if batch == 1:
            plans.append(("hf-assisted", 1, lambda f: target.generate(f, assistant_model=draft, **common)))
            continue
        plans += [
            ("hf-greedy", batch, lambda f: target.generate(f, **common)),
            ("exspec", batch, lambda f: target.generate(f, assistant_model=draft, batch_spec="exspec",
                                                        num_assistant_tokens=args.k, speculation="always",
                                                        **common)),
            ("exspec-default", batch, lambda f: target.generate(f, assistant_model=draft, **common)),
        ]
        if args.compile:  # both models' decode forwards compiled (the best of the repeats: the first compiles)
            plans.append(("hf-greedy-compiled", batch, lambda f: target.generate(
                f, cache_implementation="static", compile_config=CompileConfig(), **common)))
            plans.append(("exspec-compiled", batch, lambda f: target.generate(
                f, assistant_model=draft, batch_spec="exspec", num_assistant_tokens=args.k, speculation="always",
                compile_config=CompileConfig(), **common)))
    # Repeats go round the methods (A B C, A B C, ...), not method by method: this machine's speed drifts over
    # minutes, and a method's best run should come from the same spells as the others'.
    best = [None] * len(plans)
    for _ in range(args.repeats):
        for i, (method, batch, call) in enumerate(plans):
            rows, seconds, stats = once(batch, call, batch == 1)
            if best[i] is None or seconds < best[i][1]:
                best[i] = (rows, seconds, stats)
    reference = best[0][0]  # Whisper's greedy of each input alone
    results = []
    for (method, batch, _), (rows, seconds, stats) in zip(plans, best):
        row_rounds = sum(int(s.row_rounds.sum()) for s in stats)
        per_round = (sum(s.tokens_per_round * s.row_rounds.sum() for s in stats) / row_rounds) if row_rounds else None
        exact = sum(row == ref for row, ref in zip(rows, reference))
        results.append(WhisperResult(method, batch, seconds, sum(len(r) for r in rows), sum(seconds_of_audio),
                                     exact, len(rows), per_round))
    return results


def table(results: list[WhisperResult]) -> str:
    base = results[0]
    lines = [f"{'method':<20}{'batch':>6}{'tok/s':>9}{'audio s/s':>11}{'tok/round':>11}{'vs hf b1':>10}"
             f"{'exact':>9}"]
    for r in results:
        lines.append(f"{r.method:<20}{r.batch_size:>6}{r.tokens_per_second:>9.1f}{r.audio_seconds / r.seconds:>11.1f}"
                     f"{'' if r.tokens_per_round is None else f'{r.tokens_per_round:.2f}':>11}"
                     f"{r.tokens_per_second / base.tokens_per_second:>9.2f}x{r.exact_rows:>6}/{r.rows}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hf-batchspec bench --whisper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="a Whisper checkpoint (default: the synthetic layer-skip pair)")
    parser.add_argument("--draft", help="its draft: a WhisperForCausalLM or a smaller Whisper checkpoint")
    parser.add_argument("--d-model", type=int, default=768, help="the synthetic pair's width (a multiple of 64: "
                        "Whisper's heads are 64 wide)")
    parser.add_argument("--decoder-layers", type=int, default=12, help="the synthetic target's decoder layers")
    parser.add_argument("--num-inputs", type=int, default=16, help="inputs (random log-mel features, 5-30 s)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated; 1 gives transformers' assisted row")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="new tokens per input at most (a 30 s "
                        "transcript is about 100 tokens)")
    parser.add_argument("--k", type=int, default=4, help="num_assistant_tokens of the constant-k row")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method; the fastest counts")
    parser.add_argument("--compile", action="store_true",
                        help="add ours with compile_config (k as --k); needs --repeats >= 2 (the first run compiles)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.compile and args.repeats < 2:
        parser.error("--compile needs --repeats >= 2: the first run of each shape compiles")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.dtype}, torch threads {args.threads}, {args.num_inputs} inputs, "
          f"max_new_tokens {args.max_new_tokens}, k {args.k}", flush=True)
    print(table(run(args)))
