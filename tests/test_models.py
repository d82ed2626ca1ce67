"""One base with named adapters behaves exactly like separate models; one batch like separate passes."""
import threading

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from engine.errors import UserError
from engine.models import ModelConfig, resolve_model_path

IDS = [504, 3458, 314, 260, 1345, 282, 2428]


def test_adapters_on_and_off_equal_separate_models(tiny_wb, tiny_dir, tiny_expert_dir, tiny_unlearned_dir):
    tiny_wb.add_adapter("expert", tiny_expert_dir)
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    short = IDS[:4]
    base_o, expert_o, base_short, unl = tiny_wb.logits([(IDS, None), (IDS, "expert"), (short, None), (IDS, "unlearned")])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
        ref_base = plain(torch.tensor([IDS])).logits[0]
        ref_short = plain(torch.tensor([short])).logits[0]
        ref_expert = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_expert_dir).eval()(
            torch.tensor([IDS])).logits[0]
        ref_unl = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_unlearned_dir).eval()(
            torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(base_o, ref_base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(base_short, ref_short, rtol=1e-4, atol=1e-4)  # right padding is invisible
    torch.testing.assert_close(expert_o, ref_expert, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unl, ref_unl, rtol=1e-4, atol=1e-4)
    assert (expert_o - base_o).abs().max() > 1e-2  # the adapter really does something


def test_full_checkpoint_expert(tiny_wb, tiny_dir, tokenizer, tmp_path):
    from conftest import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", tokenizer, seed=7)
    tiny_wb.add_adapter("expert", other)
    base_o, expert_o = tiny_wb.logits([(IDS, None), (IDS, "expert")])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(other)(torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(expert_o, ref, rtol=1e-4, atol=1e-4)


def test_remove_adapter_restores_baseline(tiny_wb, tiny_expert_dir):
    before = tiny_wb.logits([(IDS, None)])[0]
    tiny_wb.add_adapter("expert", tiny_expert_dir)
    tiny_wb.remove_adapter("expert")
    assert "expert" not in tiny_wb.adapters
    torch.testing.assert_close(tiny_wb.logits([(IDS, None)])[0], before)
    with pytest.raises(UserError, match="no adapter named"):
        tiny_wb.logits([(IDS, "expert")])


def test_concurrent_callers_get_their_own_answers(tiny_wb, tiny_expert_dir):
    tiny_wb.add_adapter("expert", tiny_expert_dir)
    want = {name: tiny_wb.logits([(IDS, name)])[0] for name in (None, "expert")}
    errors = []

    def worker(name):
        for _ in range(5):
            got = tiny_wb.logits([(IDS, name)])[0]
            if not torch.allclose(got, want[name], atol=1e-5):
                errors.append(name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (None, "expert", None, "expert")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []


def test_bad_model_and_adapter_paths_are_user_errors(tiny_wb, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path("./no/such/model")
    with pytest.raises(UserError, match="does not exist"):
        tiny_wb.add_adapter("x", tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a PEFT adapter"):
        tiny_wb.add_adapter("x", tmp_path / "empty")
    with pytest.raises(UserError, match="precision"):
        ModelConfig.make(precision="int3")


def test_cpu_precision_defaults_to_fp32(tiny_wb):
    assert tiny_wb.precision == "fp32" and tiny_wb.logits([([1, 2, 3], None)])[0].dtype == torch.float32
