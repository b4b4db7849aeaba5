"""rcdm-pretrain: train a small encoder (supervised, SimCLR, VICReg, Barlow Twins) for ``encoder=local``.

- :mod:`~rcdm_lab.pretrain.networks`: the three-stage ResNet trunk and the projectors;
- :mod:`~rcdm_lab.pretrain.losses`: NT-Xent, VICReg, Barlow Twins, cross-entropy;
- :mod:`~rcdm_lab.pretrain.augment`: the per-image two-view augmentations (``augment=`` group);
- :mod:`~rcdm_lab.pretrain.methods`: the ``method=`` group's typed settings;
- :mod:`~rcdm_lab.pretrain.data`: the rendered images and their augmented views;
- :mod:`~rcdm_lab.pretrain.module`: the LightningModule;
- :mod:`~rcdm_lab.pretrain.export`: the ``encoder.pt`` format (write, read, check);
- :mod:`~rcdm_lab.pretrain.report`: the end-of-training linear-probe report (``probe.json``).

Kept import-free: ``encoder=local`` imports only ``export`` (and ``networks``), never Lightning.
"""
