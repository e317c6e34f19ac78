"""The models a tailoring is cut from: model folders (`family.Family`: base + candidates,
checked to agree) and the architecture adapter (`architecture`: where the decoder layers are, how a
config changes with the layer count, the layer forward that prefix reuse calls)."""
