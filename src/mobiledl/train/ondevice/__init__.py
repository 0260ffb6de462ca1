"""On-device training (Cai et al. 2022, Sec. 4): the engine, its memory model and the methods.

- ``lean``: lean autograd (1-bit ReLU masks, inputs kept only where a weight trains, fused
  frozen conv + BN), gradient checkpointing;
- ``step``: one training step on that engine, and its measured peak memory;
- ``memory``: the memory model of that step (trace, per-op rules, timeline simulation),
  which predicts the peak layer by layer without running it;
- ``finetune``: the training loop TinyTL, sparse update and the baselines share;
- ``tinytl``: TinyTL (Cai et al. 2020); ``sparse_update``: sparse update under a memory
  budget (Lin et al. 2022); ``adapt``: the one entry point choosing among them.

The public names are re-exported by ``mobiledl.train``.
"""
