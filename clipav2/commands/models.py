"""`clipav2 models [--json]`: every architecture with parameters (total, image, text) and forward
GFLOPs per sample at its native image size and context length.

Parameter counts are open_clip's (the image position table counted, as open_clip stores it): with
the default fixed sin-cos embedding that table is a buffer, so the trainable count is lower by
(grid^2 + 1) x width; `params_trainable` gives it."""
import json

from clipav2.models.arch import ARCHITECTURES, get_arch
from clipav2.models.flops import count_params, forward_flops


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def rows() -> list[dict]:
    out = []
    for name, arch in ARCHITECTURES.items():
        stored = count_params(get_arch(name, pos_embed="learned"))
        out.append({
            "name": name,
            "params_total": stored["total"],
            "params_image": stored["image"],
            "params_text": stored["text"],
            "params_trainable": count_params(arch)["total"],
            "gflops": round(forward_flops(arch) / 1e9, 4),
            "image_size": arch.vision.image_size,
            "context_length": arch.text.context_length,
        })
    return out


def main(args) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    width = max(len(r["name"]) for r in table) + 1  # the longest name sets the first column
    print(f"{'name':<{width}}{'px':>5}{'total':>11}{'image':>11}{'text':>11}{'trainable':>11}{'GFLOPs':>10}")
    for r in table:
        m = [f"{r[k] / 1e6:>10.2f}M" for k in ("params_total", "params_image", "params_text", "params_trainable")]
        print(f"{r['name']:<{width}}{r['image_size']:>5}{''.join(m)}{r['gflops']:>10.2f}")
    print("params as open_clip counts them (image position table included); 'trainable' leaves out the "
          "fixed sin-cos table, a buffer. GFLOPs: one forward (image + text), class token counted.")
    return 0
