"""``LongTermStore`` on Qdrant: embedded local mode by default, a Qdrant server by URL.

One collection per embedding space (``stepbus_memory_<model>_<dimensions>``, cosine), so a
model change never mixes vectors; every tenant's points live in it, told apart by payload
(``tenant`` is a keyword index with ``is_tenant``, which a server uses to co-locate a tenant's
points). Every query carries the tenant (and user) filter inside Qdrant's query.

Local mode (``path=``) is qdrant-client's embedded engine: exact search in numpy, payload
filters evaluated in Python for every point, a SQLite file, and an exclusive file lock, so one
process (one memory replica) may open a path; several replicas need a server (``url=``). Its
async client computes on the caller's thread, so here it runs on a private thread with its own
event loop and the service's loop stays free while a search scans the collection.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ..ports import MemoryError, MemoryItem, Scope, ScoredItem

__all__ = ["QdrantStore", "collection_name"]

T = TypeVar("T")

_INDEXED = ("user_id", "session_id", "kind")
_UPSERT_BATCH = 256
_SCROLL_PAGE = 1_000


def collection_name(model_id: str, dimensions: int, prefix: str = "stepbus_memory") -> str:
    """The collection for one embedding space, e.g. ``stepbus_memory_all_minilm_l6_v2_384``."""
    model = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")
    return f"{prefix}_{model}_{dimensions}"


class QdrantStore:
    """Long-term memory items as Qdrant points (point id = item id, payload = the rest).

    The client opens and the collection is created on first use (or by :meth:`start`).

    Args:
        dimensions: Vector size of the embedder that fills it.
        model_id: The embedder's model id: names the collection (see :func:`collection_name`).
        collection: The collection name, instead of one derived from ``model_id``.
        path: Directory of the embedded local store (one process at a time).
        url: A Qdrant server (``http://host:6333``); takes precedence over ``path``.
        api_key: The server's API key, if it has one.
        timeout: Seconds a server request may take.
    """

    def __init__(
        self,
        *,
        dimensions: int,
        model_id: str | None = None,
        collection: str | None = None,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if url is None and path is None:
            raise ValueError("QdrantStore needs a url (a Qdrant server) or a path (local mode)")
        if collection is None:
            if model_id is None:
                raise ValueError("QdrantStore needs the embedder's model_id or a collection name")
            collection = collection_name(model_id, dimensions)
        self.collection = collection
        self.dimensions = dimensions
        self.local = url is None
        self._path = path
        self._url = url
        self._api_key = api_key
        self._timeout = timeout
        self._client: AsyncQdrantClient | None = None
        self._thread: _LoopThread | None = None
        # Searches go first: a task waits for its recall, nothing waits for a write.
        self._searching = 0
        self._no_search = asyncio.Event()
        self._no_search.set()
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Open the client; create the collection and its payload indexes if missing.

        Raises:
            MemoryError: The server is unreachable (retryable), or the local path is held by
                another process or the collection has another vector size (not retryable).
        """
        async with self._starting:
            if self._client is not None:
                return
            if self.local and self._thread is None:
                self._thread = _LoopThread()
            client = await self._call(self._open)
            try:
                await self._call(lambda: self._ensure_collection(client))
            except BaseException:
                await self._run(client.close())
                raise
            self._client = client

    async def close(self) -> None:
        """Close the client (releases the local store's lock) and its thread."""
        if self._client is not None:
            client, self._client = self._client, None
            await self._run(client.close())
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    async def upsert(self, items: Sequence[MemoryItem], vectors: Sequence[Sequence[float]]) -> None:
        """Write items; an id already stored is replaced, so a redelivery leaves one point.

        Raises:
            ValueError: An id is not a canonical UUID string, a time has no offset, or a vector
                has the wrong size (a bug of the caller: not retryable).
            MemoryError: The store failed.
        """
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        points = [self._point(item, vector) for item, vector in zip(items, vectors, strict=True)]
        client = await self._ready()
        for start in range(0, len(points), _UPSERT_BATCH):
            batch = points[start : start + _UPSERT_BATCH]
            await self._no_search.wait()  # writes yield to waiting searches
            await self._call(partial(client.upsert, self.collection, points=batch, wait=True))

    async def search(
        self, vector: Sequence[float], scope: Scope, *, limit: int
    ) -> list[ScoredItem]:
        """The best ``limit`` items of the tenant: those without a user, plus the scope's
        user's own when it has one (never another user's); ``session_id`` does not narrow."""
        if limit < 1:
            return []
        self._check_vector(vector)
        client = await self._ready()
        self._searching += 1
        self._no_search.clear()
        try:
            response = await self._call(
                lambda: client.query_points(
                    self.collection,
                    query=list(vector),
                    query_filter=_visible_to(scope),
                    limit=limit,
                    with_payload=True,
                )
            )
        finally:
            self._searching -= 1
            if not self._searching:
                self._no_search.set()
        return [
            ScoredItem(_item(str(p.id), p.payload or {}), max(-1.0, min(1.0, p.score)))
            for p in response.points
        ]

    async def forget(self, scope: Scope) -> list[str]:
        """Delete every item of the tenant, narrowed to the scope's user and/or session when
        given (each given field must match); the ids found and deleted.

        Items are deleted by the same filter the ids were read with, so an item written
        between the two steps is deleted too, though its id is not in the list.
        """
        where = _owned_by(scope)
        client = await self._ready()
        ids: list[str] = []
        offset: Any = None
        while True:
            records, offset = await self._call(
                partial(
                    client.scroll,
                    self.collection,
                    scroll_filter=where,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=False,
                )
            )
            ids.extend(str(r.id) for r in records)
            if offset is None:
                break
        if ids:
            selector = qm.FilterSelector(filter=where)
            await self._call(lambda: client.delete(self.collection, selector, wait=True))
        return ids

    async def count(self, tenant: str) -> int:
        """Items the tenant has (every user's, every session's)."""
        client = await self._ready()
        result = await self._call(
            lambda: client.count(self.collection, count_filter=_owned_by(Scope(tenant)))
        )
        return result.count

    # -- plumbing --------------------------------------------------------------------------

    async def _open(self) -> AsyncQdrantClient:
        if self.local:
            return AsyncQdrantClient(path=str(self._path))
        return AsyncQdrantClient(url=self._url, api_key=self._api_key, timeout=int(self._timeout))

    async def _ensure_collection(self, client: AsyncQdrantClient) -> None:
        if await client.collection_exists(self.collection):
            info = await client.get_collection(self.collection)
            size = _vector_size(info)
            if size != self.dimensions:
                raise MemoryError(
                    f"collection {self.collection} holds {size}-dimensional vectors, the "
                    f"embedder makes {self.dimensions}: name the collection after the model "
                    "(collection_name) or re-create it",
                    retryable=False,
                )
        else:
            try:
                await client.create_collection(
                    self.collection,
                    vectors_config=qm.VectorParams(
                        size=self.dimensions, distance=qm.Distance.COSINE
                    ),
                )
            except UnexpectedResponse as exc:
                if exc.status_code != 409:  # another replica created it first
                    raise
        with warnings.catch_warnings():
            # Local mode keeps no payload indexes and says so once; the layout stays the same.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            await client.create_payload_index(
                self.collection,
                "tenant",
                field_schema=qm.KeywordIndexParams(
                    type=qm.KeywordIndexType.KEYWORD, is_tenant=True
                ),
            )
            for field in _INDEXED:
                await client.create_payload_index(
                    self.collection, field, field_schema=qm.PayloadSchemaType.KEYWORD
                )

    async def _ready(self) -> AsyncQdrantClient:
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._run(make())
        except UnexpectedResponse as exc:
            retryable = exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500
            raise MemoryError(
                f"Qdrant answered {exc.status_code} {exc.reason_phrase}: {exc.content[:500]!r}",
                retryable=retryable,
            ) from exc
        except (ResponseHandlingException, OSError, TimeoutError) as exc:
            raise MemoryError(
                f"Qdrant at {self._url or self._path} failed ({type(exc).__name__}: {exc}); retry",
                retryable=True,
            ) from exc
        except RuntimeError as exc:
            if "already accessed by another instance" not in str(exc):
                raise
            raise MemoryError(
                f"local Qdrant store {self._path} is open in another process: local mode "
                "serves one memory replica; run a Qdrant server and set QDRANT_URL for more",
                retryable=False,
            ) from exc

    async def _run(self, awaitable: Awaitable[T]) -> T:
        if self._thread is None:
            return await awaitable
        return await self._thread.run(awaitable)

    def _check_vector(self, vector: Sequence[float]) -> None:
        if len(vector) != self.dimensions:
            raise ValueError(
                f"vector has {len(vector)} dimensions, {self.collection} takes {self.dimensions}"
            )

    def _point(self, item: MemoryItem, vector: Sequence[float]) -> qm.PointStruct:
        self._check_vector(vector)
        try:
            canonical = str(uuid.UUID(item.id)) == item.id
        except ValueError:
            canonical = False
        if not canonical:
            raise ValueError(
                f"memory id {item.id!r} is not a canonical UUID string: derive it from the "
                "item's cause with uuid.uuid5(...) and pass str() of it"
            )
        if item.at.tzinfo is None:
            raise ValueError(f"memory {item.id} has a naive time: give `at` a UTC offset")
        payload = {
            "tenant": item.tenant,
            "user_id": item.user_id,
            "session_id": item.session_id,
            "task_id": item.task_id,
            "kind": item.kind,
            "source": item.source,
            "title": item.title,
            "text": item.text,
            "at": item.at.isoformat(),
        }
        return qm.PointStruct(id=item.id, vector=list(vector), payload=payload)


def _visible_to(scope: Scope) -> qm.Filter:
    """Tenant must match; then items without a user, or the scope user's own."""
    shared = qm.IsEmptyCondition(is_empty=qm.PayloadField(key="user_id"))
    audience: qm.Condition = shared
    if scope.user_id is not None:
        own = qm.FieldCondition(key="user_id", match=qm.MatchValue(value=scope.user_id))
        audience = qm.Filter(should=[shared, own])
    return qm.Filter(must=[_match("tenant", scope.tenant), audience])


def _owned_by(scope: Scope) -> qm.Filter:
    must: list[qm.Condition] = [_match("tenant", scope.tenant)]
    if scope.user_id is not None:
        must.append(_match("user_id", scope.user_id))
    if scope.session_id is not None:
        must.append(_match("session_id", scope.session_id))
    return qm.Filter(must=must)


def _match(key: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _item(point_id: str, payload: dict[str, Any]) -> MemoryItem:
    return MemoryItem(
        id=point_id,
        text=payload["text"],
        kind=payload["kind"],
        tenant=payload["tenant"],
        source=payload["source"],
        at=datetime.fromisoformat(payload["at"]),
        user_id=payload.get("user_id"),
        session_id=payload.get("session_id"),
        task_id=payload.get("task_id"),
        title=payload.get("title"),
    )


def _vector_size(info: qm.CollectionInfo) -> int | None:
    vectors = info.config.params.vectors
    return vectors.size if isinstance(vectors, qm.VectorParams) else None


class _LoopThread:
    """An event loop on a thread of its own, for clients that compute inside their coroutines.

    One thread serialises every call, which the local engine (not thread-safe) needs.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qdrant-local", daemon=True
        )
        self._thread.start()

    async def run(self, awaitable: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
