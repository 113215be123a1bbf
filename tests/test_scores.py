"""output_scores / output_logits: per row and step, aligned with the returned tokens."""

import torch

from tests.toolkit import left_pad
from tests.toolkit import draft_model, target_model

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17], [18]]


def test_greedy_scores_equal_plain_greedy_scores_row_by_row():
    target = target_model("qwen3")
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft_model("qwen3", "perturbed"),
                          batch_spec="exspec", max_batch_size=2, num_assistant_tokens=3, max_new_tokens=10,
                          do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
                          output_logits=True, return_dict_in_generate=True)
    assert len(out.scores) == len(out.logits) == 10
    for row, prompt in enumerate(PROMPTS):
        x = torch.tensor([prompt])
        ref = target.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                              pad_token_id=0, eos_token_id=None, output_scores=True, output_logits=True,
                              return_dict_in_generate=True)
        for step in range(10):
            torch.testing.assert_close(out.scores[step][row], ref.scores[step][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.logits[step][row], ref.logits[step][0], atol=1e-4, rtol=1e-4)
            assert out.sequences[row, ids.shape[1] + step] == ref.scores[step][0].argmax()


def test_sampling_scores_are_the_warped_logits_of_the_chosen_tokens():
    target = target_model("llama")
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft_model("llama", "perturbed"),
                          batch_spec="eqspec", max_new_tokens=8, do_sample=True, top_k=4, pad_token_id=0,
                          eos_token_id=None, output_scores=True, output_logits=True, return_dict_in_generate=True,
                          generator=torch.Generator().manual_seed(0))
    for step in range(8):
        chosen = out.sequences[:, ids.shape[1] + step]
        finite = torch.isfinite(out.scores[step]).sum(-1)
        assert (finite == 4).all()  # top_k=4 leaves four candidates per row
        assert torch.isfinite(out.scores[step].gather(1, chosen[:, None])).all()  # every token was a candidate
        # the raw logits rank the kept candidates first
        assert torch.equal(out.logits[step].topk(4).indices.sort().values,
                           torch.isfinite(out.scores[step]).nonzero()[:, 1].view(-1, 4))
