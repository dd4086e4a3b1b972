"""Images: the runtime keeps them; the engine adds the events and the one rule that
involves containers (an image in use is removed only by force)."""

from __future__ import annotations

from cnm.engine.services import Services
from cnm.errors import Conflict
from cnm.model.container import Image
from cnm.runtime.images import Loaded, normalize_reference


def familiar(reference: str) -> str:
    """Docker's ``FamiliarString`` of a tagged reference: ``docker.io/library/x:1`` -> ``x:1``."""
    name = normalize_reference(reference)
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class Images:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._runtime = svc.runtime
        self._events = svc.events

    async def import_(self, reference: str, tar_path: str) -> Image:
        image = await self._runtime.import_image(reference, tar_path)
        self._events.image("import", image.id, image.id)  # moby names the id here, and below
        return image

    async def remove(self, ref: str, force: bool = False) -> Image:
        image = self._runtime.find_image(ref)
        users = [c for c in self._svc.state.containers.values() if c.config.image_id == image.id]
        if users and not force:
            raise Conflict(
                f'conflict: unable to remove repository reference "{ref}" (must force) - '
                f"container {users[0].short_id} is using its referenced image {image.id[7:19]}"
            )
        removed = await self._runtime.remove_image(ref)
        self._events.image("untag", removed.id, removed.id)
        if all(i.id != removed.id for i in self._runtime.images()):  # its last tag went
            self._events.image("delete", removed.id, removed.id)
        return removed

    async def tag(self, source: str, target: str) -> Image:
        image = await self._runtime.tag_image(source, target)
        self._events.image("tag", image.id, familiar(target))
        return image

    async def load(self, archive_path: str) -> list[Loaded]:
        loaded = await self._runtime.load_images(archive_path)
        for item in loaded:
            self._events.image("load", item.image.id, item.image.id)
        return loaded
