"""Logical axis names used by modules, and the default rules mapping them to mesh axes.

Modules annotate parameters with these names only; the config's `sharding_rules` decides the
layout: data parallel (everything replicated, batch split over 'data'), FSDP ('embed' split over
'fsdp', ZeRO-3 style), tensor parallel ('heads'/'kv_heads'/'mlp'/'vocab' split over 'tensor'). 'layers' is the leading
axis of stacked block parameters (`model.backbone.scan_layers`): never split, since `lax.scan`
reads one layer at a time.
"""
MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv_heads", "kv", "vocab", "layers")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
)
