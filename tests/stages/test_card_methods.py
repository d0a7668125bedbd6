"""The card names the training method and its parameters, from the train summary."""

from __future__ import annotations

from distill.stages.card import METHOD_TEXT, method_params


def test_a_preference_student_card_lists_what_it_was_trained_on_and_how():
    text = method_params({"method": "dpo", "pairs": {"rule": "hardest", "pairs": 40, "prompts_with_pairs": 20},
                          "preference": {"beta": 0.1, "loss_type": "sigmoid"}})
    assert "preference data: rule hardest, pairs 40, prompts_with_pairs 20." in text
    assert "preference: beta 0.1, loss_type sigmoid." in text


def test_kd_and_on_policy_parameters_are_named_and_sft_adds_nothing():
    assert "kd: divergence forward_kl, ce_weight 0.5" in method_params({"kd": {"divergence": "forward_kl", "ce_weight": 0.5}})
    assert "on-policy: lmbda 0.5" in method_params({"on_policy": {"lmbda": 0.5}})
    assert method_params({"method": "sft"}) == ""
    assert all(m in METHOD_TEXT for m in ("sft", "dpo", "kto", "sft+dpo", "kd", "on-policy"))
