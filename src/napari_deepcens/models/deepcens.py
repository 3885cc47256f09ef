"""DeepCeNS: Cascade Mask R-CNN on a ResNeSt + FPN backbone with deformable convolutions.

The architecture of seed 000 rebuilt from torchvision's detection parts (detectron2 cannot be
installed from the registries we reach) and timm's ResNeSt:

* backbone: timm ResNeSt (any depth; ``channels`` narrows it for CPU), the 3×3 convolutions of
  the later stages replaced by :class:`torchvision.ops.DeformConv2d` with learned offsets;
* torchvision :class:`~torchvision.ops.FeaturePyramidNetwork` (P2–P5 + a max-pooled P6);
* torchvision's RPN with small anchors spread over the pyramid levels and five aspect ratios;
* a three-stage cascade (IoU 0.5 / 0.6 / 0.7, class-agnostic box regression, each stage's boxes
  the next stage's proposals) with the mask head on the final stage;
* input normalised by the training data's mean and standard deviation (stored in the config).

The network takes planes already normalised by :func:`napari_deepcens.io.images.to_plane`
(``in_channels`` = 1: one grey plane; 3: per-channel normalised RGB) and returns, in eval
mode, per image: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``classes`` (N,) in 1..K and
``masks`` (N, M, M) probabilities inside each box.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import DeformConv2d, FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

#: The paper's anchor sizes for nuclei (setting 2: 2 … 256 px), two per pyramid level.
PAPER_ANCHORS = ((2, 6), (8, 12), (17, 24), (31, 64), (127, 256))
#: Anchors for nuclei at the DSB2018 training scale (median ~20 px, ×0.5–×2 augmentation).
SMALL_ANCHORS = ((6, 12), (16, 24), (32, 48), (64, 96), (128, 192))


def centred_masks(masks: Tensor, boxes: Tensor) -> Tensor:
    """Masks resampled so that cell ``j`` of an ``M``-cell row covers ``x0 + (j + 0.5)·w/M``.

    Why: the mask targets of training (torchvision's ``maskrcnn_loss``, ``roi_align`` with
    ``aligned=False``) sample cell ``j`` at ``x0 + 0.5 + (j + 0.5)·w/M`` in pixel-edge
    coordinates, half a pixel right of and below the box's own cells, so the network learns
    masks that sit half a pixel down-right in their box. Pasting them as they are put every
    object half a network pixel up-left (0.5 / zoom of the user's pixels), and a flipped
    pass the other way. ``boxes`` (N, 4) xyxy in the pixels the network saw."""
    n, m = masks.shape[0], masks.shape[-1]
    if n == 0:
        return masks
    masks = masks.float()
    cells = torch.arange(m, device=masks.device, dtype=torch.float32) + 0.5
    w = (boxes[:, 2] - boxes[:, 0]).float().clamp(min=1e-3)
    h = (boxes[:, 3] - boxes[:, 1]).float().clamp(min=1e-3)
    # new cell j reads the learnt mask half a pixel (0.5·M/w cells) before its own centre
    gx = 2 * (cells[None] - 0.5 * m / w[:, None]) / m - 1
    gy = 2 * (cells[None] - 0.5 * m / h[:, None]) / m - 1
    grid = torch.stack([gx[:, None, :].expand(n, m, m), gy[:, :, None].expand(n, m, m)], dim=-1)
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0]


@dataclass
class DeepCeNSConfig:
    """Architecture of a DeepCeNS network (stored in the weights file)."""

    backbone: str = "resnest14d"
    #: Stage widths of the ResNeSt (timm ``channels``); ``None`` = the standard 64…512.
    channels: tuple[int, ...] | None = (32, 64, 128, 256)
    in_channels: int = 1
    classes: tuple[str, ...] = ("nucleus",)
    fpn_channels: int = 128
    #: Backbone stages (1–4) whose 3×3 convolutions are deformable; () switches them off.
    deformable_stages: tuple[int, ...] = (3, 4)
    anchor_sizes: tuple[tuple[int, ...], ...] = SMALL_ANCHORS
    aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 2000
    rpn_post_nms_test: int = 2000
    #: Test-time proposals follow the image area: ``rpn_post_nms_test`` for a 1024² image (the
    #: paper's inputs are about that size), never fewer than this. A 256² crop holds at most
    #: ~300 training-size nuclei; its 2000 proposals were mostly duplicates, and box RoIAlign
    #: on them was over a third of the CPU time (val: 1000 instead of 2000, −44 % time).
    rpn_post_nms_test_min: int = 1000
    rpn_batch: int = 256
    cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    #: RoIs sampled per image for the box heads (the paper's detectron2 default is 512; 128
    #: trains ~2× faster on CPU and dense nuclei crops rarely have more than 32 positives).
    roi_batch: int = 128
    roi_positive_fraction: float = 0.25
    box_head_dim: int = 256
    mask_head_dim: int = 128
    #: Training: at most this many positive RoIs per image train the mask head. Once the
    #: cascade's boxes are good nearly every sampled RoI is positive at the last stage, and the
    #: mask head's cost would triple without adding much signal (dense nuclei crops).
    mask_batch: int = 64
    detections_per_image: int = 1000
    nms_threshold: float = 0.5
    #: Detections kept in the raw output; the user's score slider works above this.
    min_score: float = 0.05
    pixel_mean: tuple[float, ...] = (0.25,)
    pixel_std: tuple[float, ...] = (0.25,)

    def __post_init__(self) -> None:
        # JSON round trips give lists: make every sequence a tuple again.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
                object.__setattr__(self, f.name, value)
        if len(self.pixel_mean) != self.in_channels or len(self.pixel_std) != self.in_channels:
            raise ValueError("pixel_mean and pixel_std need one value per input channel")
        if not all(math.isfinite(v) for v in self.pixel_mean) or not all(
                math.isfinite(v) and v > 0 for v in self.pixel_std):
            raise ValueError("pixel_mean must be finite and pixel_std finite and positive")
        if not (0 <= self.min_score <= 1 and 0 < self.nms_threshold <= 1):
            raise ValueError("min_score must lie in [0, 1] and nms_threshold in (0, 1]")
        if len({len(s) for s in self.anchor_sizes}) != 1 or len(self.anchor_sizes) != 5:
            raise ValueError("anchor_sizes: five pyramid levels with the same number of sizes each")
        if not self.classes:
            raise ValueError("at least one class name")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def test_proposals(self, height: int, width: int) -> int:
        """RPN proposals kept for an image of ``height`` × ``width`` at test time."""
        by_area = round(self.rpn_post_nms_test * height * width / 1024**2)
        return int(min(self.rpn_post_nms_test, max(self.rpn_post_nms_test_min, by_area)))

    @classmethod
    def paper(cls, **overrides: Any) -> DeepCeNSConfig:
        """The configuration of the paper: ResNeSt-200, FPN 256, 1024-d box head, its anchors,
        cells and nuclei, three input channels."""
        base = dict(backbone="resnest200e", channels=None, in_channels=3, classes=("cell", "nucleus"),
                    fpn_channels=256, anchor_sizes=PAPER_ANCHORS, box_head_dim=1024, roi_batch=512,
                    mask_head_dim=256, pixel_mean=(0.25,) * 3, pixel_std=(0.25,) * 3)
        return cls(**{**base, **overrides})


class DeformableConv(nn.Module):
    """A 3×3 convolution whose sampling grid is shifted by offsets predicted from its input.

    Offsets start at zero, so a fresh deformable layer computes what the plain one did.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        self.offset = nn.Conv2d(conv.in_channels, 2 * kh * kw, kernel_size=conv.kernel_size,
                                stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                 stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                                 groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset = self.offset(x)
        # DeformConv2d has no reduced-precision kernel: run it in the offsets' float32.
        return self.conv(x.float(), offset.float()).to(x.dtype)


def make_deformable(stage: nn.Module) -> int:
    """Replace every 3×3 convolution inside ``stage`` by a :class:`DeformableConv`."""
    count = 0
    for parent in list(stage.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                setattr(parent, name, DeformableConv(child))
                count += 1
    return count


class Backbone(nn.Module):
    """ResNeSt stages C2–C5 → FPN levels ``'0'``–``'3'`` and ``'pool'`` (strides 4–64)."""

    def __init__(self, cfg: DeepCeNSConfig) -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {"channels": tuple(cfg.channels)} if cfg.channels else {}
        self.body = timm.create_model(cfg.backbone, pretrained=False, features_only=True,
                                      out_indices=(1, 2, 3, 4), in_chans=cfg.in_channels, **kwargs)
        for stage in cfg.deformable_stages:
            make_deformable(getattr(self.body, f"layer{stage}"))
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), cfg.fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = cfg.fpn_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class CascadeStage(nn.Module):
    """One detection stage: RoIAlign → two FC layers → class logits and a class-agnostic box."""

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = TwoMLPHead(in_channels * 7 * 7, dim)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(pooled)
        return self.cls_score(x), self.bbox_pred(x)


#: Box-delta normalisation per stage (Cascade R-CNN): later stages see tighter boxes.
STAGE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


@dataclass
class StageTargets:
    """Per-image training targets of one stage's boxes."""

    labels: list[Tensor] = field(default_factory=list)
    matched: list[Tensor] = field(default_factory=list)
    regression: list[Tensor] = field(default_factory=list)


class DeepCeNS(nn.Module):
    """Cascade Mask R-CNN; see the module docstring for what goes in and comes out."""

    kind: ClassVar[str] = "detection"
    #: Image sizes must be multiples of this (P6 is stride 64).
    SIZE_MULTIPLE: ClassVar[int] = 64

    def __init__(self, config: DeepCeNSConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DeepCeNSConfig()
        self.num_classes = len(cfg.classes)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, -1, 1, 1), persistent=False)
        self.backbone = Backbone(cfg)
        c = cfg.fpn_channels
        anchors = AnchorGenerator(tuple(tuple(s) for s in cfg.anchor_sizes),
                                  (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=cfg.rpn_batch,
            positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
            nms_thresh=0.7,
        )
        levels = ["0", "1", "2", "3"]
        self.box_pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
        self.mask_pool = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
        self.stages = nn.ModuleList(CascadeStage(c, cfg.box_head_dim, self.num_classes)
                                    for _ in cfg.cascade_ious)
        self.coders = [det_utils.BoxCoder(STAGE_WEIGHTS[min(i, 2)]) for i in range(len(cfg.cascade_ious))]
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in cfg.cascade_ious]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(cfg.roi_batch, cfg.roi_positive_fraction)
        self.mask_head = MaskRCNNHeads(c, (cfg.mask_head_dim,) * 4, 1)
        self.mask_predictor = MaskRCNNPredictor(cfg.mask_head_dim, cfg.mask_head_dim, self.num_classes + 1)

    # -- shared pieces -------------------------------------------------------------------------
    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def _match(self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> StageTargets:
        """Class and box-regression targets of ``proposals`` at the stage's IoU threshold."""
        out = StageTargets()
        for boxes, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_classes = target["boxes"], target["labels"]
            if gt_boxes.numel() == 0:
                matched = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                regression = torch.zeros_like(boxes)
            else:
                quality = box_ops.box_iou(gt_boxes, boxes)
                idx = self.matchers[stage](quality)
                matched = idx.clamp(min=0)
                labels = gt_classes[matched].to(torch.int64)
                labels[idx < 0] = 0  # below threshold (and between thresholds): background
                regression = self.coders[stage].encode_single(gt_boxes[matched], boxes)
            out.labels.append(labels)
            out.matched.append(matched)
            out.regression.append(regression)
        return out

    def _sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """First stage: RPN proposals + ground-truth boxes, subsampled to ``roi_batch`` a image."""
        proposals = [torch.cat([p, t["boxes"]]) for p, t in zip(proposals, targets, strict=True)]
        labels = self._match(0, proposals, targets).labels
        pos, neg = self.sampler(labels)
        return [p[torch.where(a | b)[0]] for p, a, b in zip(proposals, pos, neg, strict=True)]

    def _run_stage(self, stage: int, features: dict[str, Tensor], boxes: list[Tensor],
                   sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        pooled = self.box_pool(features, boxes, sizes)
        return self.stages[stage](pooled)

    def _refine(self, stage: int, deltas: Tensor, boxes: list[Tensor],
                sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Decoded, clipped boxes of a stage: the next stage's proposals (no gradient through)."""
        counts = [len(b) for b in boxes]
        decoded = self.coders[stage].decode_single(deltas.detach().float(), torch.cat(boxes))
        out = []
        for part, size in zip(decoded.split(counts), sizes, strict=True):
            out.append(box_ops.clip_boxes_to_image(part, size))
        return out

    # -- forward -------------------------------------------------------------------------------
    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):
        """Training (``targets`` given, train mode): dict of losses. Eval: list of detections."""
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        features = self.backbone(self.normalise(images))
        image_list = ImageList(images, sizes)
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            return self._losses(image_list, features, targets)
        self.rpn._post_nms_top_n["testing"] = self.config.test_proposals(*sizes[0])
        proposals, _ = self.rpn(image_list, features)
        return self._detect(features, proposals, sizes)

    def _losses(self, image_list: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        proposals, losses = self.rpn(image_list, features, targets)
        sizes = image_list.image_sizes
        boxes = self._sample([p.detach() for p in proposals], targets)
        stage_targets = StageTargets()
        for stage in range(len(self.stages)):
            stage_targets = self._match(stage, boxes, targets)
            logits, deltas = self._run_stage(stage, features, boxes, sizes)
            labels = torch.cat(stage_targets.labels)
            regression = torch.cat(stage_targets.regression)
            losses[f"loss_cls_{stage}"] = F.cross_entropy(logits.float(), labels)
            positive = torch.where(labels > 0)[0]
            box_loss = F.smooth_l1_loss(deltas.float()[positive], regression[positive], beta=1 / 9,
                                        reduction="sum")
            losses[f"loss_box_{stage}"] = box_loss / max(labels.numel(), 1)
            if stage + 1 < len(self.stages):
                boxes = self._refine(stage, deltas, boxes, sizes)
        # Mask head on the final stage's positives, at their (final-stage input) boxes.
        mask_boxes, mask_matched = [], []
        for b, lab, m in zip(boxes, stage_targets.labels, stage_targets.matched, strict=True):
            keep = torch.where(lab > 0)[0]
            if len(keep) > self.config.mask_batch:
                keep = keep[torch.randperm(len(keep), device=keep.device)[: self.config.mask_batch]]
            mask_boxes.append(b[keep])
            mask_matched.append(m[keep])
        if sum(len(b) for b in mask_boxes) == 0:
            losses["loss_mask"] = self.mask_predictor.mask_fcn_logits.weight.sum() * 0.0
        else:
            mask_logits = self.mask_predictor(self.mask_head(self.mask_pool(features, mask_boxes, sizes)))
            losses["loss_mask"] = maskrcnn_loss(mask_logits.float(), mask_boxes,
                                                [t["masks"] for t in targets],
                                                [t["labels"] for t in targets], mask_matched)
        return losses

    @torch.no_grad()
    def _detect(self, features: dict[str, Tensor], proposals: list[Tensor],
                sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Cascade inference: each stage refines the previous stage's boxes; class scores are
        the mean of the three stages'; masks are predicted on the final boxes."""
        boxes = proposals
        scores: list[Tensor] = []
        deltas = None
        for stage in range(len(self.stages)):
            logits, deltas = self._run_stage(stage, features, boxes, sizes)
            scores.append(F.softmax(logits.float(), -1))
            final = self._refine(stage, deltas, boxes, sizes)
            if stage + 1 < len(self.stages):
                boxes = final
        probs = torch.stack(scores).mean(0)  # the cascade's ensemble of the three stages' scores
        results = []
        counts = [len(b) for b in boxes]
        for img_probs, img_boxes in zip(probs.split(counts), final, strict=True):
            fg = img_probs[:, 1:]
            n, k = fg.shape
            cand_boxes = img_boxes[:, None, :].expand(n, k, 4).reshape(-1, 4)
            cand_scores = fg.reshape(-1)
            cand_classes = torch.arange(1, k + 1, device=fg.device).repeat(n)
            keep = torch.where(cand_scores > self.config.min_score)[0]
            cand_boxes, cand_scores, cand_classes = cand_boxes[keep], cand_scores[keep], cand_classes[keep]
            wide = box_ops.remove_small_boxes(cand_boxes, 1.0)
            cand_boxes, cand_scores, cand_classes = cand_boxes[wide], cand_scores[wide], cand_classes[wide]
            keep = box_ops.batched_nms(cand_boxes, cand_scores, cand_classes, self.config.nms_threshold)
            keep = keep[: self.config.detections_per_image]
            results.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep],
                            "classes": cand_classes[keep]})
        det_boxes = [r["boxes"] for r in results]
        if sum(len(b) for b in det_boxes):
            logits = self.mask_predictor(self.mask_head(self.mask_pool(features, det_boxes, sizes)))
            logits = logits.float()
            start = 0
            for r in results:
                n = len(r["boxes"])
                part = logits[start : start + n]
                r["masks"] = centred_masks(
                    torch.sigmoid(part[torch.arange(n, device=part.device), r["classes"]]), r["boxes"])
                start += n
        else:
            m = self.mask_predictor.mask_fcn_logits.weight.new_zeros
            for r in results:
                r["masks"] = m((0, 28, 28))
        return results
