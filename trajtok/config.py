"""Job configuration: dataclass schemas <- YAML file <- `key=value` overrides.

Every job (synth, label, shard, train, eval, demo, bench) reads one `JobConfig`. The schema gives
defaults and types; a YAML file under `configs/` sets what differs; command-line overrides win last.
An unknown key or a value of the wrong type is a `ConfigError` that names the key path and the file,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

try:  # OmegaConf's own YAML loader (floats like 1e-4, duplicate keys refused); private, moved in 2.4
    from omegaconf._yaml import get_yaml_loader
except ImportError:  # omegaconf 2.3
    from omegaconf._utils import get_yaml_loader

from trajtok.errors import ConfigError
from trajtok.rundir import CONFIG_FILE, write_text

# the registry's, for --help without torch
VLM_NAMES = ("trajvlm", "patchvlm")  # video-language models: trained on QA sets, evaluated by task qa
MODEL_NAMES = ("trajvit2", "vit3d", "segmenter", "trajadapter", *VLM_NAMES)
DECODE_TIMEOUT = 60.0  # seconds before a hanging decode is abandoned (`pipeline.decode_timeout`, readers)


DEVICE_DECODE_FORMATS = ("jpg", "mp4")  # data.device_decode: what a training device can decode


@dataclass
class DataConfig:
    """Where the data is: a manifest for pipeline jobs, shard URLs for training and evaluation."""

    manifest: str = ""
    shards: str = ""  # brace pattern or list separated by spaces: "out/shard-{000000..000007}.tar"
    eval_shards: str = ""
    num_workers: int = 2
    readers_per_step: int = 0  # seeded readers per global batch; 0 = one per rank. A checkpoint resumes on
    # any rank count dividing it (with the same global batch): set 64 to move between 1 and 64 ranks freely
    samples_per_epoch: int = 1024  # virtual epoch over resampled shards
    image_ratio: float = 0.0  # fraction of image (T=1) samples mixed into video batches
    shuffle_buffer: int = 256
    image_shards: str = ""  # shards holding the image (T=1) samples for image_ratio; "" = the same `shards`
    crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])  # random resized crop: area fraction
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # and aspect ratio range
    flip: float = 0.5  # probability of a horizontal flip (frames and labels together)
    jitter: float = 0.8  # probability of colour jitter (frames only)
    jitter_strength: float = 0.4  # brightness, contrast, saturation factors drawn in [1 - s, 1 + s]
    grey: float = 0.1  # probability of turning a clip grey
    blur: float = 0.1  # probability of a Gaussian blur
    # formats whose frames the trainer decodes on its device (nvjpeg, NVDEC) instead of the loader workers
    device_decode: list[str] = field(default_factory=list)  # e.g. [jpg]; see trajtok/data/device_decode.py


@dataclass
class ClipConfig:
    """How clips are cut from videos and sampled into frames."""

    frames: int = 16
    size: int = 224  # short side (pipeline) / square crop (model input)
    seconds: float = 0.0  # clip length; 0 = the whole video (or the manifest's start/end)
    clips_per_video: int = 1
    sampling: str = "random"  # "random": a random frame per bin (training); "middle": bin centres (eval)


@dataclass
class VLMConfig:
    """`trajvlm` / `patchvlm`: a decoder-only language model answers questions about a video it reads
    through a connector (TrajTok trajectories, or pooled patches) over a trained model's feature map."""

    language: str = "tiny"  # tiny: a small random Qwen3-style LM; or a local checkpoint directory
    tokenizer: str = ""  # the LM's tokenizer.json; "" = the checkpoint's own (train makes one for tiny)
    vision: str = ""  # the feature map: a trained vit3d / trajvit2 / segmenter run, or hf:<local dir>
    segmenter: str = ""  # trajvlm: a trained segmenter or trajvit2 run; "" = `vision` when that segments
    window_frames: int = 8  # frames per vision window and per segmentation window (the release's 8)
    tokens_per_trajectory: int = 1  # trajvlm: n tokens per trajectory (K x n LLM tokens per window)
    link_iou: float = 0.0  # trajvlm: > 0 links trajectories across windows at this mask IoU
    masks: str = "coverage"  # trajvlm: coverage | hard: how a trajectory reads (as eval.probe.masks)
    patch_pool: int = 3  # patchvlm: feature cells pooled per side (3 x 3, the paper's baseline)
    stage: str = "all"  # connector: only the connector learns (LM, vision, segmenter frozen); all: every part
    freeze_vision: bool = True  # in stage `all`, keep the vision tower (and segmenter) frozen anyway
    lr_connector: float = 1.0  # per-part learning rates, as multiples of train.lr
    lr_vision: float = 1.0
    lr_language: float = 1.0
    max_text_tokens: int = 48  # question + answer tokens
    answer_tokens: int = 4  # tokens generated for an answer at evaluation


@dataclass
class ModelConfig:
    """Which model, at which size; names are the registry names used everywhere."""

    name: str = "trajvit2"  # trajvit2 | vit3d | trajadapter | segmenter | trajvlm | patchvlm
    size: str = "tiny"  # tiny | small | base | paper
    num_queries: int = 0  # K trajectories; 0 = the size's default
    tokens_per_trajectory: list[int] = field(default_factory=lambda: [1, 2, 4])
    text_tokenizer: str = "bytes"  # bytes | bpe:<path> | hf:<local dir>
    backbone_weights: str = ""  # optional local timm/torchvision ConvNeXt weights
    embed_dim: int = 0  # 0 = the size's default
    transformer: str = ""  # tiny | S | B | L; "" = the size's default
    rotary: str = "1d"  # 1d: rotary over the flattened (t, h, w) index; 3d: per axis
    eval_tokens_per_trajectory: int = 1  # n at inference (training draws from tokens_per_trajectory)
    text_max_len: int = 64  # caption tokens (bytes for the default tokenizer)
    num_classes: int = 0  # trajadapter's classifier outputs
    adapter_feature_dim: int = 768  # C of the frozen feature map (B, T, h, w, C) trajadapter probes
    adapter_query_dim: int = 0  # width of the segmenter whose queries start trajadapter's tokens; 0 = size's
    # only what counts is computed: trajectory tokens read their own pixels by index (no dense mask), and
    # only valid tokens enter the transformer, packed per batch (trajtok.models.sequence_packing)
    packed: bool = True
    assignment_head: str = "release"  # the segmenter's heads: release (D -> 128 -> 64) | mlp (D -> D -> D)
    logit_scale_init: float = 0.0  # the assignment's scale at init; 0 = 10 (the release starts at 3.83)
    # cost switches (trajtok.models.context): the Perceivers read keys and values of features pooled 2x2
    # (-31 % of trajvit2's FLOPs at paper size, 16 frames, no loss measured on the demo: docs/training.md);
    # the segmenter reads the trajectory encoder's keys and values (its gradient still stops at the features)
    pooled_read: bool = True
    shared_kv: bool = False
    # the paper's ablations (true = the paper's model): the segmenter's queries read detached features;
    # trajectory tokens read only their trajectory's pixels (false: all pixels, biased by the soft mask)
    detach_features: bool = True
    hard_mask: bool = True
    tome_r: int = 0  # vit3d + token merging (ToMe): tokens merged per transformer block; 0 = off
    # vit3d + run-length tokenization (RLT): drop tubelets whose mean absolute change from the previous one
    # is below this (ImageNet-normalised units; 0.1 is about 6 grey levels); 0 = off
    rlt_threshold: float = 0.0
    # trajvit2 on long clips: segment in chunks of this many frames, one token set per chunk (the release's
    # advice for T > 8); 0 = the whole clip at once
    segment_chunk_frames: int = 0
    channels_last: bool = False  # NHWC convolutions in the backbone (faster with bf16 on GPUs)
    compile: bool = False  # torch.compile each model part (GPU; costs start-up time)
    init: str = ""  # warm start: a run dir or weights.safetensors whose matching parts load (train only)
    vlm: VLMConfig = field(default_factory=VLMConfig)


@dataclass
class LossConfig:
    """Loss weights; segmenter pre-training uses focal + 2 * dice without the contrastive term."""

    contrastive: float = 1.0
    focal: float = 0.5
    dice: float = 1.0
    pretrain_focal: float = 1.0  # mode "segmenter"
    pretrain_dice: float = 2.0


@dataclass
class TrainConfig:
    """Optimisation and the DeepSpeed engine."""

    steps: int = 100
    batch_size: int = 8  # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0  # the cosine decays to this at `steps`
    weight_decay: float = 0.02
    warmup_steps: int = 10
    grad_clip: float = 1.0
    zero_stage: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto | none | PATH
    overlay_every: int = 0  # log trajectory overlays every K steps (0 = only at the end)
    picture_clips: int = 3  # the fixed clips those pictures show: eval_set's first, else the first batch's
    eval_set: str = ""  # held-out manifest or shard pattern: the pictures' clips, and validation
    eval_every: int = 0  # retrieval on eval_set every K steps and at the end, as val/retrieval/* (0 = never)
    dry_run: bool = False  # print the job's plan (model, memory per rank, shards, where output goes), exit
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class PseudolabelConfig:
    """Which labeler makes the trajectory label maps, and its knobs."""

    name: str = "classical"  # classical | sam2 | import
    max_trajectories: int = 128
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """The Ray sharding job."""

    out: str = ""
    clips_per_shard: int = 64
    overwrite: bool = False
    label_actors: int = 0  # worker actors; 0 = one per CPU of the Ray cluster (or per label_gpus of its GPUs)
    label_gpus: float = 0.0  # GPUs per worker; 0 = one if the labeler wants a GPU and the cluster has one
    decode_timeout: float = DECODE_TIMEOUT
    frame_format: str = "mp4"  # mp4 | jpg | png
    label: bool = True  # false: unlabelled samples (frames and metadata only)
    stall_timeout: float = 600.0  # seconds without a finished clip: the worker is replaced, its row failed
    max_attempts: int = 3  # tries of a shard whose worker fails with no row to blame
    retry_failed: bool = False  # a rerun also redoes finished shards that recorded failed rows


@dataclass
class RayConfig:
    address: str = ""  # "" = start a local Ray; "auto" or "host:port" = join a cluster
    num_cpus: int = 0  # local Ray only; 0 = all cores


@dataclass
class LaunchConfig:
    """Where a job runs: local processes, or SLURM through submitit."""

    backend: str = "local"  # local | slurm
    nproc: int = 1  # local processes
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 0  # 0 = SLURM's default (1); Ray jobs (`submit shard`): every CPU of the node
    mem_gb: int = 0  # 0 = the partition's default; Ray jobs: all of the node's memory
    exclusive: bool = False  # the nodes to this job alone (Ray jobs are, unless cpus_per_task is set)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job: module load, exports
    sbatch: dict[str, Any] = field(default_factory=dict)  # further sbatch options: {mail-type: END, ...}
    partition: str = ""
    time: str = "60"  # as sbatch takes it: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS
    account: str = ""
    qos: str = ""
    constraint: str = ""
    max_requeues: int = 3
    dry_run: bool = False
    folder: str = ""  # submitit logs; "" = <run_dir>/submitit
    smoke_hold_s: float = 0.0  # `submit smoke`: the first attempt holds its allocation this long (drills)


@dataclass
class TrackingConfig:
    """MLflow: a SQLite store in the working directory unless a URI is given (or MLFLOW_TRACKING_URI)."""

    enabled: bool = True
    uri: str = ""
    experiment: str = "trajtok"
    run_name: str = ""
    register: str = ""  # also register the trained model under this name in the model registry
    system_metrics: bool = True  # CPU/memory/GPU of rank 0's node, when psutil is installed
    system_metrics_interval: float = 10.0  # seconds between samples


@dataclass
class ProbeConfig:
    """Probing: every head gets the same frozen features, data order, steps, learning rate and batch size."""

    heads: list[str] = field(default_factory=lambda: ["linear", "attentive", "trajadapter"])
    train: str = ""  # manifest or shard pattern of the clips the heads learn from; the eval set scores them
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    size: str = "tiny"  # model size whose widths the attentive probe and TrajAdapter take
    # "pkg.module:factory" -> torch module: frames -> (B, T, h, w, C); hf:<dir> = a local Hugging Face
    # vision model (VideoMAE, V-JEPA 2, SigLIP, ...: trajtok.models.hf_features); "" = eval.ckpt
    feature_module: str = ""
    # TrajAdapter: a trained segmenter or trajvit2 run (or weights file) segments the frames; "" = eval.ckpt
    # when that is one. One TrajAdapter head per n tokens per trajectory.
    segmenter: str = ""
    tokens_per_trajectory: list[int] = field(default_factory=lambda: [1, 2, 4])
    chunk_frames: int = 8  # frames per segmentation window (the release's training length); 0 = whole clip
    link_iou: float = 0.0  # > 0: trajectories continuing across windows are linked at this mask IoU
    # coverage: a trajectory reads every feature it covers part of, its attention weighted by the share (a
    # ViT's 16 px patches are 4x coarser than the segmenter's grid: small trajectories own no whole patch);
    # hard: only the features it owns (argmax of the logits on the feature grid, the release's; packed,
    # cheaper: coverage caches (features x windows*K) shares per clip and attends densely)
    masks: str = "coverage"


@dataclass
class EvalConfig:
    """Evaluation of the clips in data.manifest or data.eval_shards, sampled per `clip` (frames, size)."""

    task: str = "retrieval"  # retrieval | classify | segment | probe | qa (a VLM on a QA manifest)
    ckpt: str = ""  # exported weights (.safetensors), or the training run directory that holds them
    dual_softmax: bool = False  # also report dual-softmax retrieval (it uses the whole test set at once)
    join_captions: bool = False  # a video's captions as one paragraph (DiDeMo / ActivityNet protocol)
    templates: list[str] = field(default_factory=lambda: ["a video of {}."])
    classes: list[str] = field(default_factory=list)  # [] = the sorted distinct `label` values of the set
    tokens_per_trajectory: int = 0  # trajvit2's n at inference; 0 = the checkpoint's
    batch_size: int = 16
    out: str = ""  # folder of eval_<task>.json; "" = run_dir
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class SynthConfig:
    """The built-in synthetic dataset: textured shapes with exact trajectory ground truth."""

    out: str = "demo-out/synth"
    videos: int = 32
    frames: int = 32
    height: int = 128
    width: int = 160
    fps: float = 8.0
    seed: int = 0
    generator: str = "shapes"  # shapes | blobs: two generators drawn unlike each other (data/synth.py)
    # long-video QA instead of captions: objects enter, leave and turn at their own times; one manifest row
    # per question with `question`, `answer` (one word) and `question_type` (data/synth_qa.py)
    questions: bool = False


@dataclass
class DemoVLMConfig:
    """The VLM line at demo size (configs/demo-vlm.yaml): long-video QA sets and the VLMs' training."""

    models: list[str] = field(default_factory=list)  # trajvlm, patchvlm; [] = the main demo instead
    frames: int = 64  # frames per long video (8 windows of 8)
    train_videos: int = 256  # videos of the QA training set (3-4 questions each)
    heldout_videos: int = 64  # held-out videos (demo.heldout_seed)
    steps: int = 400
    batch_size: int = 8
    lr: float = 1.0e-3


@dataclass
class DemoConfig:
    """The main job on built-in data (`trajtok demo`), sized to finish in minutes on 2 CPU cores."""

    out: str = "demo-out"
    train_videos: int = 256
    heldout_videos: int = 32
    heldout_seed: int = 1000  # synthetic seeds of the held-out set: never seen in training
    models: list[str] = field(default_factory=lambda: ["trajvit2", "vit3d"])
    real_videos: str = ""  # real videos to label for pictures; "" = ../shared/data/videos if present
    train_manifest: str = ""  # your own captioned clips instead of the synthetic training set
    heldout_manifest: str = ""  # ... and held-out set (its `gt_labels` column, if any, scores the segmenter)
    segmenter_steps: int = 150  # stage 1 of trajvit2: the segmenter alone on the pseudo-labels; 0 = none
    segmenter_lr: float = 3.0e-3  # stage 1's peak learning rate (its own warm-up and cosine)
    rounds: int = 1  # self-labelling: round r > 1 relabels the training set with round r-1's trajvit2
    control: bool = True  # ... and also trains round r on round 1's labels, for as many steps, to compare
    vlm: DemoVLMConfig = field(default_factory=DemoVLMConfig)


@dataclass
class JobConfig:
    """One job's whole configuration; every subcommand reads this."""

    run_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudolabel: PseudolabelConfig = field(default_factory=PseudolabelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


INT_TAG = "tag:yaml.org,2002:int"
# YAML 1.1's integers without its base-60 form: `24:00:00` stays the string a SLURM user typed, not 86400
DECIMAL_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")


def _yaml_loader() -> type:
    """OmegaConf's loader, less sexagesimal integers (times and ports written with colons stay strings)."""
    base = get_yaml_loader()
    loader = type("TrajtokYamlLoader", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != INT_TAG]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(INT_TAG, DECIMAL_INT, list("-+0123456789"))
    return loader


YAML_LOADER = _yaml_loader()
EXTENDS_KEY = "extends"  # a config file's base file, read first


def _override(item: str) -> DictConfig:
    """One `key=value` override as a nested config, its value read as YAML (as OmegaConf's dotlist does)."""
    key, value = item.split("=", 1)
    node = OmegaConf.create()
    OmegaConf.update(node, key, yaml.load(value, Loader=YAML_LOADER) if value else None)
    return node


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    reason = str(err).splitlines()[0]
    return f"key '{key}': {reason}" if key else reason


def _config_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """The YAML file at `path` after the files it `extends` (a path relative to it), base first: a config
    that differs from another in a few keys names it instead of copying it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(p.name for p in seen)}")
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER) or {}
    except Exception as err:  # yaml.YAMLError and friends: one line is enough for the user
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    base = data.pop(EXTENDS_KEY, None)
    layers = [OmegaConf.create(data)]
    if base is None:
        return layers
    parent = path.parent / str(base)
    if not parent.is_file():
        raise ConfigError(f"{path}: {EXTENDS_KEY}: {parent}: config file not found")
    return _config_layers(parent, (*seen, path.resolve())) + layers


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Build a validated `JobConfig` from the schema, an optional YAML file and dotlist overrides."""
    merged: DictConfig = OmegaConf.structured(JobConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        for layer in _config_layers(path):
            try:
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as err:
                raise ConfigError(f"{path}: {_describe(err)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        try:
            merged = OmegaConf.merge(merged, _override(item))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}': {_describe(err)}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': not valid YAML: {str(err).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path or 'config'}: {_describe(err)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (or one of its groups), for JSON, MLflow params and digests."""
    return dataclasses.asdict(cfg)


def config_digest(cfg: Any) -> str:
    """Stable short digest of a config group: detects a changed setting between a job and its rerun."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}}` -> `{"train.lr": 1e-4}`: the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def save_config(cfg: JobConfig, run_dir: str | Path) -> Path:
    """Write the resolved config beside the run, so every run can be reproduced from its directory."""
    return write_text(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
