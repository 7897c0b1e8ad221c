"""Target features for draft training: ShareGPT JSON -> sharded safetensors + manifest.

Each conversation is tokenized with the target's chat template (assistant-only loss mask, see
`data.py`), run through the frozen target, and stored as: input_ids (int32), loss_mask (uint8)
and the post-norm last hidden state (the feature the heads predict; optionally extra layers for
EAGLE-3-style fusion) and the target's top-K next-token probabilities and ids at every position
(what training distils, so it never has to run the full-vocabulary lm_head). Samples are concatenated per shard with an `offsets` index.

Resumable: a shard is written atomically and only then recorded in manifest.json (also written
atomically); a restarted run skips the conversations of recorded shards, so a kill loses at most
the shard in progress and never duplicates one. The manifest records the config, package
versions, counts and every skipped record with its reason.
"""

from __future__ import annotations

import json
import math
import platform
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hass_sglang.errors import HassError
from hass_sglang.io import write_file_atomic, write_json_atomic
from hass_sglang.target import Target, TargetParts, dtype_from_name
from hass_sglang.train.data import load_sharegpt, tokenize_conversation
from hass_sglang.train.distributed import barrier, rank_world
from hass_sglang.train.losses import teacher_topk

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: per-shard counts and indices (data-parallel extraction)


class FeatureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    target: str
    max_length: int = 512
    shard_size: int = 64  # conversations per shard
    batch_tokens: int = 4096  # tokens per target forward (padded batch)
    extra_layers: tuple[int, ...] = ()  # hidden_states indices to store besides the final feature
    storage_dtype: str = "bfloat16"  # dtype the features are stored in (not the target's compute dtype); in the manifest
    teacher_topk: int = 10  # target top-K (probabilities + ids) stored per position for training; 0 = none
    engine: Literal["transformers", "sglang"] = "transformers"  # who runs the target (SGLangHiddenStates)


def _versions() -> dict:
    import transformers

    import hass_sglang

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "hass_sglang": hass_sglang.__version__, "python": platform.python_version()}


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


@torch.no_grad()
def _features(target: Target, batch: list[list[int]], extra_layers: tuple[int, ...], teacher_k: int) -> list[dict]:
    """Right-padded batch forward; returns per-sample tensors trimmed to their lengths."""
    longest = max(len(x) for x in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    att = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
    out = target.model.model(
        input_ids=ids.to(target.device), attention_mask=att.to(target.device),
        output_hidden_states=bool(extra_layers), use_cache=False,
    )
    res = []
    for i, x in enumerate(batch):
        n = len(x)
        item = {"hidden": out.last_hidden_state[i, :n].float().cpu()}
        if teacher_k:
            p, ids = teacher_topk(target.logits(out.last_hidden_state[i, :n]), teacher_k)
            item["teacher_p"], item["teacher_ids"] = p.float().cpu(), ids.to(torch.int32).cpu()
        for layer in extra_layers:
            item[f"layer_{layer}"] = out.hidden_states[layer][i, :n].float().cpu()
        res.append(item)
    return res


class SGLangHiddenStates:
    """Target features computed by a running SGLang server: the target runs where it is served (its
    TP, multi-node, the serving images and manifests), this process only tokenises and applies the
    lm_head for the teacher top-K.

    One `/generate` request per conversation (input ids, one new token, `return_hidden_states`),
    `concurrency` in flight. SGLang returns the hidden state its logits processor gets: after the
    final norm, the same `last_hidden_state` the transformers path stores. It returns rows only for
    the tokens it prefilled, so the server must not reuse a cached prefix (`--disable-radix-cache`)
    and must prefill a conversation in one chunk (`--chunked-prefill-size` >= --max-length); both
    are checked on every answer. Start it with:
      python -m sglang.launch_server --model-path <target> --enable-return-hidden-states --disable-radix-cache
    """

    def __init__(self, url: str, parts: TargetParts, tokenizer, concurrency: int = 8, timeout_s: float = 600.0):
        self.url, self.parts, self.tokenizer = url.rstrip("/"), parts, tokenizer
        self.config, self.concurrency, self.timeout_s = parts.config, max(1, concurrency), timeout_s

    def _one(self, ids: list[int]) -> torch.Tensor:
        import httpx  # huggingface_hub's HTTP client, always installed

        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_hidden_states": True}
        try:
            r = httpx.post(self.url + "/generate", json=body, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise HassError(f"SGLang server at {self.url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise HassError(f"SGLang server at {self.url} answered {r.status_code}: {r.text[:300]} "
                            "(is it started with --enable-return-hidden-states?)")
        hidden = r.json()["meta_info"].get("hidden_states")
        if not hidden:
            raise HassError(f"SGLang server at {self.url} returned no hidden states: start it with "
                            "--enable-return-hidden-states")
        rows = torch.tensor(hidden[0], dtype=torch.float32)
        if rows.shape != (len(ids), self.config.hidden_size):
            raise HassError(f"SGLang returned hidden states of shape {tuple(rows.shape)} for a {len(ids)}-token "
                            f"prompt (hidden size {self.config.hidden_size}): it reused a cached prefix or "
                            "prefilled in chunks; start it with --disable-radix-cache and a --chunked-prefill-size "
                            "of at least --max-length")
        return rows

    def features(self, batch: list[list[int]], extra_layers: tuple[int, ...], teacher_k: int) -> list[dict]:
        if extra_layers:
            raise HassError("--extra-layers needs the transformers engine (SGLang returns the last hidden state only)")
        with ThreadPoolExecutor(self.concurrency) as pool:
            hidden = list(pool.map(self._one, batch))
        res = []
        for h in hidden:
            item = {"hidden": h}
            if teacher_k:  # on the lm_head's device (--device: a GPU of the client host when it has one)
                lm = self.parts.lm_head_weight
                p, ids = teacher_topk(torch.nn.functional.linear(h.to(lm.device, lm.dtype), lm).float(), teacher_k)
                item["teacher_p"], item["teacher_ids"] = p.float().cpu(), ids.to(torch.int32).cpu()
            res.append(item)
        return res


def _shard(target: Target, cfg: FeatureConfig, chunk, storage) -> tuple[dict | None, dict]:
    """Features of one shard's conversations: (tensors to save or None, its manifest entry)."""
    samples, skipped, truncated = [], Counter(), 0
    for conv in chunk:
        ids, mask, cut = tokenize_conversation(target.tokenizer, conv, cfg.max_length)
        truncated += cut
        if sum(mask) == 0:
            skipped["no assistant tokens within max_length"] += 1
            continue
        samples.append((conv.id, ids, mask))
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][1]))
    feats: dict[int, dict] = {}
    i = 0
    while i < len(order):  # length-sorted batches bounded by batch_tokens
        j = i + 1
        while j < len(order) and (j - i + 1) * len(samples[order[j]][1]) <= cfg.batch_tokens:
            j += 1
        batch = [samples[k][1] for k in order[i:j]]
        compute = target.features if isinstance(target, SGLangHiddenStates) else lambda *a: _features(target, *a)
        for k, f in zip(order[i:j], compute(batch, cfg.extra_layers, cfg.teacher_topk)):
            feats[k] = f
        i = j
    lengths = [len(s[1]) for s in samples]
    entry = {"conversations": len(chunk), "samples": len(samples), "tokens": sum(lengths),
             "loss_tokens": sum(sum(s[2]) for s in samples), "truncated": truncated, "skipped": dict(skipped)}
    if not samples:
        return None, entry
    tensors: dict[str, list[torch.Tensor]] = {}
    for k, (_, ids, mask) in enumerate(samples):
        tensors.setdefault("input_ids", []).append(torch.tensor(ids, dtype=torch.int32))
        tensors.setdefault("loss_mask", []).append(torch.tensor(mask, dtype=torch.uint8))
        for name, t in feats[k].items():
            tensors.setdefault(name, []).append(t if name.startswith("teacher_") else t.to(storage))
    flat = {k: torch.cat(v) for k, v in tensors.items()}
    flat["offsets"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    return {"tensors": flat, "ids": [s[0] for s in samples]}, entry


def _totals(manifest: dict) -> None:
    """Manifest-level counts as sums over the shard entries (so ranks can write entries apart)."""
    manifest["shards"].sort(key=lambda e: e["index"])
    for key in ("samples", "tokens", "loss_tokens", "truncated"):
        manifest[key] = sum(e[key] for e in manifest["shards"])
    skipped: Counter = Counter()
    for e in manifest["shards"]:
        skipped.update(e["skipped"])
    manifest["skipped"] = dict(skipped)


def extract_features(target: Target | SGLangHiddenStates, cfg: FeatureConfig, out_dir: str | Path,
                     progress: bool = True) -> dict:
    """Run (or resume) feature extraction; returns the manifest. `target`: a loaded target
    (transformers) or an SGLang server (`SGLangHiddenStates`); cfg.engine says which.

    Data-parallel under torchrun (an initialised torch.distributed group): rank r computes the
    shards whose index is r modulo the world size and records them in its own
    `progress.rank{r}.json`; rank 0 merges every rank's entries into manifest.json at the end. A
    resumed run, with any number of ranks, skips every shard recorded in either place."""
    if isinstance(target, SGLangHiddenStates) != (cfg.engine == "sglang"):
        raise HassError(f"features: engine {cfg.engine!r} but the target is {type(target).__name__}")
    rank, world = rank_world()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    if manifest is not None:
        # the stored config with today's defaults for fields it predates
        stored, wanted = FeatureConfig(**manifest["config"]).model_dump(mode="json"), cfg.model_dump(mode="json")
        if stored != wanted:
            diff = ", ".join(f"{k} {stored[k]!r} -> {wanted[k]!r}" for k in wanted if stored[k] != wanted[k])
            raise HassError(f"{out_dir} holds features made with a different config ({diff}); use a new folder")
    if manifest is not None and manifest.get("format_version", 1) < 2:
        if manifest.get("complete"):
            return manifest  # a finished older-format set stays usable as it is
        raise HassError(f"{out_dir} holds unfinished features of an older format; use a new folder")
    if manifest is None:
        manifest = {"format_version": FORMAT_VERSION, "config": cfg.model_dump(mode="json"), "versions": _versions(),
                    "hidden_size": int(target.config.hidden_size), "vocab_size": int(target.config.vocab_size),
                    "shards": [], "complete": False}
    progress_files = sorted(out_dir.glob("progress.rank*.json"))
    entries = {e["index"]: e for e in manifest["shards"]}
    for f in progress_files:
        entries.update({e["index"]: e for e in json.loads(f.read_text())})
    convs = load_sharegpt(cfg.data)
    n_shards = math.ceil(len(convs) / cfg.shard_size)
    todo = [i for i in range(n_shards) if i not in entries and i % world == rank]
    mine_file = out_dir / f"progress.rank{rank}.json"
    mine = [e for e in entries.values() if e["index"] % world == rank] if world > 1 else []
    storage = dtype_from_name(cfg.storage_dtype)
    for index in tqdm(todo, desc="features", disable=not progress or rank > 0):
        chunk = convs[index * cfg.shard_size : (index + 1) * cfg.shard_size]
        data, entry = _shard(target, cfg, chunk, storage)
        name = f"shard-{index:05d}.safetensors"
        if data is not None:  # the shard file first, then its record: a kill never records a missing file
            write_file_atomic(out_dir / name, lambda tmp: save_file(data["tensors"], str(tmp),
                                                                      metadata={"ids": json.dumps(data["ids"])}))
        entry = {"index": index, "file": name if data is not None else None, **entry}
        if world > 1:
            mine.append(entry)
            write_json_atomic(mine_file, mine, indent=1)
        else:
            manifest["shards"].append(entry)
            _totals(manifest)
            write_json_atomic(out_dir / MANIFEST, manifest, indent=1)
    if world > 1:
        barrier()
        if rank > 0:  # this rank's share only; rank 0 returns and writes the whole
            manifest = {**manifest, "shards": mine}
            _totals(manifest)
            return manifest
        for f in sorted(out_dir.glob("progress.rank*.json")):
            entries.update({e["index"]: e for e in json.loads(f.read_text())})
        manifest["shards"] = list(entries.values())
    manifest["complete"] = len(manifest["shards"]) == n_shards
    _totals(manifest)
    write_json_atomic(out_dir / MANIFEST, manifest, indent=1)
    if manifest["complete"]:
        for f in out_dir.glob("progress.rank*.json"):
            f.unlink()
    return manifest


def load_shard(out_dir: str | Path, entry: dict, hidden_size: int | None = None) -> list[dict]:
    """Samples of one shard as dicts of tensors; checks the feature width against `hidden_size`."""
    flat = load_file(str(Path(out_dir) / entry["file"]))
    if hidden_size is not None and flat["hidden"].shape[-1] != hidden_size:
        raise HassError(f"features in {entry['file']} have hidden size {flat['hidden'].shape[-1]}, model has {hidden_size}")
    off = flat["offsets"].tolist()
    keys = [k for k in flat if k != "offsets"]
    return [{k: flat[k][off[i] : off[i + 1]] for k in keys} for i in range(len(off) - 1)]


def epoch_batches(lengths: list[list[int]], seed: int, epoch: int, size: int, window: int,
                  by_length: bool = True) -> list[list[tuple[int, int]]]:
    """An epoch's batches of at most `size` (shard, sample) keys, a function of (seed, epoch);
    `lengths[s][j]`: tokens of sample j of shard s. Shards are shuffled and taken `window` at a time
    (a few files open at once); with `by_length`, a window's samples sorted by length are cut into
    batches (little padding; what it saves: benchmarks/train_step_cost.py) whose order is shuffled;
    without, the samples are shuffled and cut in order. Either way every sample is in exactly one batch and an epoch has
    ceil(samples / size) batches."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    shards = torch.randperm(len(lengths), generator=g).tolist()
    grouped, mixed, carry = [], [], []
    for w in range(0, len(shards), window):
        keys = [(s, j) for s in shards[w : w + window] for j in range(len(lengths[s]))]
        if not by_length:
            mixed += [keys[i] for i in torch.randperm(len(keys), generator=g).tolist()]
            continue
        # the samples beyond a whole number of batches join the next window: only the last window
        # may cut a short batch
        keys = sorted(carry + keys, key=lambda k: (lengths[k[0]][k[1]], k))
        keep = len(keys) if w + window >= len(shards) else len(keys) // size * size
        keys, carry = keys[:keep], keys[keep:]
        cut = [keys[i : i + size] for i in range(0, len(keys), size)]
        grouped += [cut[i] for i in torch.randperm(len(cut), generator=g).tolist()]
    return grouped if by_length else [mixed[i : i + size] for i in range(0, len(mixed), size)]


class FeatureSet:
    """A finished feature folder read lazily: samples come from memory-mapped safetensors slices, so
    training holds a batch in memory, not the feature set (flat in the number of shards).

    An epoch's batches are a function of (seed, epoch): shards shuffled, then the samples of each
    window of `window_shards` consecutive shards batched together (mixing shards, reading a few
    files at a time): grouped by length, or shuffled (`batches`)."""

    def __init__(self, folder: str | Path, hidden_size: int, window_shards: int = 4):
        from safetensors import safe_open

        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None or not manifest.get("complete"):
            raise HassError(f"{self.folder}: no complete feature set (run or resume `hass features` first)")
        if manifest["hidden_size"] != hidden_size:
            raise HassError(f"features in {self.folder} have hidden size {manifest['hidden_size']}, "
                            f"the target has {hidden_size}")
        self.manifest, self.window = manifest, max(1, window_shards)
        self.files = [e["file"] for e in manifest["shards"] if e["file"]]
        self.offsets = []
        for name in self.files:  # the small offsets index of each shard; the tensors stay on disk
            with safe_open(str(self.folder / name), framework="pt") as fh:
                self.offsets.append(fh.get_tensor("offsets").tolist())
        self.index = [(s, j) for s, off in enumerate(self.offsets) for j in range(len(off) - 1)]
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, seed: int, epoch: int, size: int, by_length: bool = True) -> list[list[tuple[int, int]]]:
        """An epoch's batches of (shard, sample) keys: `epoch_batches` over this set's shards."""
        lengths = [[b - a for a, b in zip(off, off[1:])] for off in self.offsets]
        return epoch_batches(lengths, seed, epoch, size, self.window, by_length)

    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard not in self._open:
            if len(self._open) >= self.window:  # keep a window of files open
                self._open.pop(next(iter(self._open)))
            self._open[shard] = safe_open(str(self.folder / self.files[shard]), framework="pt")
        return self._open[shard]

    def sample(self, shard: int, j: int) -> dict[str, torch.Tensor]:
        fh = self._handle(shard)
        lo, hi = self.offsets[shard][j], self.offsets[shard][j + 1]
        return {k: fh.get_slice(k)[lo:hi] for k in fh.keys() if k != "offsets"}

    def __iter__(self):
        for s, j in self.index:
            yield self.sample(s, j)
