"""Memory accounting for the chain engines: what one network call keeps for backward, and peak memory per iteration.

Two measurements, both in bytes:

* ``saved_tensor_bytes(fn, ...)``: the activations one call of ``fn`` keeps alive for its backward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, parameters and buffers excluded). It does not
  depend on the device, so the engine uses it on CPU and GPU alike to decide how many chain steps fit a budget.
* ``PeakMemory``: the peak of one block of code. On CUDA it is ``torch.cuda.max_memory_allocated`` (everything the
  caching allocator hands out: weights, inputs, activations, temporaries). On CPU, where torch keeps no allocator
  statistics, it is the peak of live bytes saved for backward plus the chain states an engine stores outside
  autograd (registered with ``hold``): the part of the memory that grows with the chain length K. Weights, inputs
  and short-lived temporaries are not counted on CPU, so compare CPU numbers with CPU numbers only.
"""
from __future__ import annotations

import weakref
from typing import Callable, Iterable

import torch

_ACTIVE_METERS: list["SavedTensorMeter"] = []


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


def module_storage_keys(*modules) -> set[tuple[str, int]]:
    """Storage keys of the parameters and buffers of modules: saved weights are not activations."""
    keys: set[tuple[str, int]] = set()
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for p in list(m.parameters()) + list(m.buffers()):
                keys.add(_storage_key(p))
    return keys


class _Packed:
    """What the pack hook hands to autograd: the tensor, plus a release callback run when autograd drops it."""

    __slots__ = ("tensor", "_release", "__weakref__")

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None] | None):
        self.tensor = tensor
        self._release = release

    def __del__(self):
        if self._release is not None:
            self._release()


class SavedTensorMeter:
    """Live and peak bytes of tensors saved for backward (each storage once) and of states registered with ``hold``.

    Use as a context manager; parameters and buffers of ``exclude`` modules are not counted. Saved tensors are
    released when autograd frees them (after backward, or when the graph is dropped); held tensors when the
    Python tensor object is garbage collected.
    """

    def __init__(self, exclude: Iterable = ()):
        self.exclude = module_storage_keys(*exclude)
        self.live = 0
        self.peak = 0
        self._refs: dict[tuple[str, int], list[int]] = {}  # key -> [count, nbytes]
        self._hooks = None

    # accounting by storage: a storage saved by several ops (or held and saved) counts once
    def _add(self, key, nbytes) -> None:
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1

    def _remove(self, key) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def _pack(self, t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter):
            return _Packed(t, None)
        key = _storage_key(t)
        if key in self.exclude:
            return _Packed(t, None)
        self._add(key, t.untyped_storage().nbytes())
        ref = weakref.ref(self)

        def release(key=key):
            meter = ref()
            if meter is not None:
                meter._remove(key)

        return _Packed(t, release)

    @staticmethod
    def _unpack(p: _Packed) -> torch.Tensor:
        return p.tensor

    def hold(self, tensors: Iterable[torch.Tensor | None]) -> None:
        """Count tensors kept outside autograd (an engine's chain states) until they are garbage collected."""
        for t in tensors:
            if t is None:
                continue
            key = _storage_key(t)
            if key in self.exclude:
                continue
            self._add(key, t.untyped_storage().nbytes())
            weakref.finalize(t, self._remove, key)

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        _ACTIVE_METERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE_METERS.remove(self)
        self._hooks.__exit__(*exc)
        self._hooks = None


def hold(tensors: Iterable[torch.Tensor | None]) -> None:
    """Register tensors an engine stores outside autograd with every active meter (free when none is active)."""
    if _ACTIVE_METERS:
        tensors = list(tensors)
        for meter in _ACTIVE_METERS:
            meter.hold(tensors)


def saved_tensor_bytes(fn: Callable, *args, exclude: Iterable = ()) -> int:
    """Bytes one call ``fn(*args)`` keeps saved for backward (unique storages, weights of ``exclude`` left out)."""
    with torch.enable_grad(), SavedTensorMeter(exclude=exclude) as meter:
        out = fn(*args)
        nbytes = meter.live
    del out
    return int(nbytes)


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated (reset on entry), or on CPU the SavedTensorMeter peak.

    ``with PeakMemory(device, exclude=[net]) as pm: ...`` then ``pm.peak_bytes`` and ``pm.kind`` (what was measured).
    """

    def __init__(self, device: str | torch.device, exclude: Iterable = ()):
        self.device = torch.device(device)
        self.exclude = list(exclude)
        self.peak_bytes = 0
        self.kind = ("cuda max_memory_allocated" if self.device.type == "cuda"
                     else "cpu saved-for-backward + held states")
        self._meter: SavedTensorMeter | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._meter = SavedTensorMeter(exclude=self.exclude).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._meter.__exit__(*exc)
            self.peak_bytes = int(self._meter.peak)


def cuda_free_bytes(device: torch.device) -> int:
    """Free device memory plus what torch's caching allocator holds unused (both usable by the next allocation)."""
    free, _total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached_unused, 0))


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
