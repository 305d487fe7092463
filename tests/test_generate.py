import pytest

import jlang
from jlang.models.generate import greedy

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["llama2", "gemma3"])
def test_greedy_matches_transformers_generate(tiny_dirs, name):
    path, torch_model = tiny_dirs[name]
    model = jlang.load_model(path, progress=False)
    prompts = ["w5 w9 w11 w4", "w100 w7"]
    ours = greedy(model, prompts, max_new_tokens=8)
    for prompt, text in zip(prompts, ours):
        ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ref = torch_model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        expected = model.tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        assert text == expected


def test_cli_info(tiny_dirs, capsys):
    from jlang.cli import main

    path, _ = tiny_dirs["qwen3"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "family" in out and "qwen3" in out and "neurons per layer" in out and "83" in out
    assert main(["info", str(path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
