"""An open_clip CLIPA-style model config with our "tiny" shapes, shared by the interchange tests."""

TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8, mlp_ratio=2,
                    no_ln_pre=True, pool_type="avg", final_ln_after_pool=True),
    text_cfg=dict(context_length=16, vocab_size=32000, width=32, heads=2, layers=2, mlp_ratio=2,
                  pool_type="last", no_causal_mask=True),
)
