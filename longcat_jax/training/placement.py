"""Where training's arrays live: one device, or a mesh from `longcat_jax.sharding` for data parallel and FSDP.

On a mesh of n devices (`parallel.devices`), every batch is split along its batch dimension (each device trains
on batch_size / n clips of every micro-batch), the LoRA factors and optimiser state are replicated (XLA sums
their gradients over the devices), and the frozen base weights are replicated or, with `parallel.fsdp`, stored
split over the devices (each holds about 1/n; XLA gathers what each layer needs). Several hosts: start one
process per host with `jax.distributed` (`longcat_jax.sharding.initialize_distributed`, see its README); every
process reads the same batches and places its devices' parts.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from longcat_jax.errors import ConfigError
from longcat_jax.sharding.mesh import CONTEXT_AXIS, make_mesh
from longcat_jax.sharding.params import param_shardings, put
from longcat_jax.training.batches import Batch
from longcat_jax.training.config import TrainConfig

logger = logging.getLogger(__name__)


def training_mesh(config: TrainConfig) -> Mesh | None:
    """The mesh of `parallel.devices` devices (null: all visible), or None for one device."""
    devices = config.parallel.devices
    if devices == 1:
        if config.parallel.fsdp:
            logger.warning("'parallel.fsdp' has no effect on one device")
        return None
    mesh = make_mesh(devices)
    if mesh.size == 1:
        return None
    if config.training.batch_size % mesh.size:
        raise ConfigError(f"'training.batch_size' {config.training.batch_size} must be a multiple of the "
                          f"{mesh.size} devices of the mesh (each trains on its share of every batch)")
    return mesh


@dataclasses.dataclass(frozen=True)
class Placement:
    """Puts the frozen weights, the trained state and batches where the step expects them."""

    mesh: Mesh | None = None
    fsdp: bool = False

    def frozen(self, state):
        """The frozen base weights (and LoRA scales): replicated, or split with FSDP."""
        if self.mesh is None:
            return jax.device_put(state, jax.local_devices()[0])
        return put(state, param_shardings(state, self.mesh, CONTEXT_AXIS, fsdp=self.fsdp))

    def replicated(self, tree):
        """The LoRA factors and optimiser state: on every device."""
        if self.mesh is None:
            return jax.device_put(tree, jax.local_devices()[0])
        sharding = NamedSharding(self.mesh, P())
        return put(tree, jax.tree.map(lambda _: sharding, tree))

    def batch(self, batch: Batch) -> dict[str, jax.Array]:
        """A `Batch` as the step takes it, split along its batch dimension (axis 1) over the mesh."""
        arrays = dataclasses.asdict(batch)
        if self.mesh is None:
            return jax.device_put(arrays, jax.local_devices()[0])
        sharding = NamedSharding(self.mesh, P(None, CONTEXT_AXIS))
        return put(arrays, jax.tree.map(lambda _: sharding, arrays))
