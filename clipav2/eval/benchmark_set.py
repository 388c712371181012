"""A labelled shard set in the layout LAION's CLIP_benchmark reads as `--dataset wds/NAME
--dataset_root OUT` (clip_benchmark/datasets/builder.py, `build_wds_dataset`):

    OUT/test/0.tar .. N-1.tar                      links to the set's shards, in order
    OUT/test/nshards.txt                           N
    OUT/classnames.txt                             one class name a line (index = label)
    OUT/zeroshot_classification_templates.txt      one template a line, `{c}` for the class name

The class names and templates are those `clipav2 eval ... eval.protocol=open_clip` uses (as written,
not canonicalised), so the two evaluators see the same prompts."""
from __future__ import annotations

import os
from pathlib import Path

SPLIT = "test"  # clip_benchmark's default --split


def write_clip_benchmark_set(shards, out, classnames: str = "imagenet", templates: str = "imagenet") -> int:
    """Write the layout above for the labelled shards `shards` (a directory, pattern or list);
    returns the number of shards. `classnames` / `templates` as data.eval_classnames / _templates."""
    from clipav2.data.shards import REMOTE_PREFIXES, expand_urls
    from clipav2.eval.protocol import zero_shot_prompts

    if Path(str(shards)).is_dir() and not any(Path(str(shards)).glob("*.tar")):
        raise ValueError(f"{shards}: no .tar shards (an ImageFolder set is read by clip_benchmark's own "
                         f"dataset names, e.g. --dataset imagenet1k)")
    urls = expand_urls(shards)
    remote = [u for u in urls if u.startswith(REMOTE_PREFIXES)]
    if remote:
        raise ValueError(f"{remote[0]}: only local shards can be linked")
    beside = Path(str(shards)) if Path(str(shards)).is_dir() else Path(urls[0]).parent
    names, prompts = zero_shot_prompts("open_clip", classnames, templates, beside)
    split = Path(out) / SPLIT
    split.mkdir(parents=True, exist_ok=True)
    if any(split.iterdir()):
        raise FileExistsError(f"{split} is not empty")
    for i, url in enumerate(urls):
        os.symlink(os.path.abspath(url), split / f"{i}.tar")
    (split / "nshards.txt").write_text(f"{len(urls)}\n")
    (Path(out) / "classnames.txt").write_text("\n".join(names) + "\n")
    # clip_benchmark fills a template with str.format(c=name): our `{}` becomes `{c}`, other braces doubled
    braced = [t.replace("{", "{{").replace("}", "}}").replace("{{}}", "{c}") for t in prompts]
    (Path(out) / "zeroshot_classification_templates.txt").write_text("\n".join(braced) + "\n")
    return len(urls)
