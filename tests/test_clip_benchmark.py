"""LAION's CLIP_benchmark on an exported model, without edits. `clipav2 convert --to open_clip`
writes a folder that open_clip loads offline with its tokenizer, `clipav2 data benchmark` lays a
labelled set out as clip_benchmark's wds/ dataset, and clip_benchmark's zero-shot evaluation, run
in a process with no network and an empty Hugging Face cache, agrees with `clipav2 eval ...
eval.protocol=open_clip`: the same class embeddings and the same top-1 / top-5."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clipav2
from clipav2 import cli
from clipav2.eval import protocol
from clipav2.eval.zeroshot import class_embeddings
from clipav2.models.convert import save_model
from clipav2.text import tokenize

pytest.importorskip("clip_benchmark")

DEMO = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
PROMPTS = ["a photo of a red circle.", "A Blue TRIANGLE, drawn", "x " * 40]  # the last one is truncated

# In a fresh process: open_clip loads the folder and its tokenizer, then clip_benchmark's own CLI.
CHILD = """
import json, sys
import open_clip, torch
from clip_benchmark.cli import main
folder, out, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model, _, _ = open_clip.create_model_and_transforms("local-dir:" + folder)
ids = open_clip.get_tokenizer("local-dir:" + folder)(prompts)
with torch.no_grad():
    text = model.eval().encode_text(ids, normalize=True)
json.dump({"ids": ids.tolist(), "text": text.tolist()}, open(out, "w"))
sys.argv = ["clip_benchmark", *sys.argv[4:]]
main()
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, its open_clip folder, the eval shards, the clip_benchmark dataset root)."""
    from clipav2.data.demo import write_demo

    root = tmp_path_factory.mktemp("clip_benchmark")
    write_demo(root / "data", seed=0, n_train=1, n_eval=144, shard_size=64)  # 3 shards
    torch.manual_seed(0)
    model = clipav2.create_model("demo", image_size=64).eval()
    save_model(model, root / "finetune.safetensors", stage="finetune")
    assert cli.main(["convert", "--to", "open_clip", str(root / "finetune.safetensors"), str(root / "folder")]) == 0
    assert cli.main(["data", "benchmark", str(root / "data" / "eval"), str(root / "wds"),
                     "--classnames", "demo", "--templates", "demo"]) == 0
    return model, root / "folder", root / "data" / "eval", root / "wds"


def test_the_folder_holds_its_tokenizer_and_the_set_its_c_templates(exported):
    _, folder, _, wds = exported
    assert {"vocab.txt", "tokenizer_config.json", "open_clip_config.json", "open_clip_model.safetensors"} <= {
        p.name for p in folder.iterdir()}
    templates = (wds / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates and all(t.count("{c}") == 1 and "{}" not in t for t in templates)
    assert (wds / "test" / "nshards.txt").read_text().strip() == "3"
    assert len((wds / "classnames.txt").read_text().splitlines()) == 36


@pytest.mark.slow  # clip_benchmark's own process and evaluation
def test_clip_benchmark_agrees_with_clipav2_eval_offline(exported, tmp_path, capsys):
    model, folder, shards, wds = exported
    out, result, clf = tmp_path / "open_clip.json", tmp_path / "result.json", tmp_path / "clf.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               OMP_NUM_THREADS="1")
    env.pop("CLIPAV2_VOCAB", None)  # the folder's tokenizer must be enough
    bench = ["eval", "--model_type", "open_clip", "--model", f"local-dir:{folder}", "--dataset", "wds/demo",
             "--dataset_root", str(wds), "--no_amp", "--num_workers", "0", "--batch_size", "64",
             "--output", str(result), "--save_clf", str(clf), "--quiet"]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), json.dumps(PROMPTS), *bench],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # open_clip, offline, from the folder alone: our tokens and our text embeddings
    loaded = json.loads(out.read_text())
    ours_ids = tokenize(PROMPTS, model.text.context_length, "open_clip")
    assert loaded["ids"] == ours_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["text"]), model.encode_text(ours_ids), atol=1e-5, rtol=1e-4)

    # clip_benchmark's classifier is clipav2's open_clip-protocol class embeddings
    names, templates = protocol.zero_shot_prompts("open_clip", "demo", "demo", shards)
    ours_clf = class_embeddings(model, names, templates, lambda t: tokenize(t, model.text.context_length, "open_clip"),
                                torch.device("cpu"))
    theirs_clf = torch.load(clf, weights_only=True)
    torch.testing.assert_close(theirs_clf.T, ours_clf, atol=1e-5, rtol=1e-4)

    theirs = json.loads(result.read_text())["metrics"]
    assert cli.main(["eval", DEMO, "data.demo=false", f"data.eval={shards}", "eval.protocol=open_clip", "--json",
                     "--checkpoint", str(folder.parent / "finetune.safetensors")]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["zero_shot"]
    print(f"top-1 clip_benchmark {theirs['acc1']:.4f} clipav2 {ours['top1']:.4f}; "
          f"top-5 {theirs['acc5']:.4f} {ours['top5']:.4f} (n={ours['n']})")
    assert ours["n"] == 144
    assert abs(theirs["acc1"] - ours["top1"]) <= 1 / 144 and abs(theirs["acc5"] - ours["top5"]) <= 1 / 144
