"""Where the injected triples come from, registered by name (`knowledge.source`).

Each source turns the `knowledge` config into a KnowledgeSet; `world()` builds the synthetic world
on first use (only the sources that need it pay for it). A new source is one function here plus a
`conf/knowledge/NAME.yaml` with `source: NAME`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from kinject.errors import ConfigError
from kinject.knowledge import wikidata
from kinject.knowledge.facts import KnowledgeSet
from kinject.knowledge.world import World
from kinject.registry import Registry

KnowledgeSource = Callable[[DictConfig, Callable[[], World]], KnowledgeSet]
KNOWLEDGE_SOURCES: Registry[KnowledgeSource] = Registry("knowledge.source")


@KNOWLEDGE_SOURCES.register("synthetic")
def synthetic(cfg: DictConfig, world: Callable[[], World]) -> KnowledgeSet:
    """K facts about fresh people of the synthetic world, who appear in no background document."""
    names = world().relations
    include = list(cfg.include) if cfg.include is not None else list(names)
    unknown = sorted(set(include) - set(names))
    if unknown or not include:
        raise ConfigError("knowledge.include", f"relation names among {sorted(names)}", unknown or include)
    return world().knowledge(world().fresh_facts(int(cfg.num_facts), int(cfg.seed), include))


@KNOWLEDGE_SOURCES.register("wikidata")
def wikidata_triples(cfg: DictConfig, world: Callable[[], World]) -> KnowledgeSet:
    """Triples from local Wikidata / LAMA T-REx files, rendered with the configured templates."""
    include = list(cfg.include) if cfg.include is not None else None
    relations = cast(dict[str, Any], OmegaConf.to_container(cfg.relations, resolve=True))  # a mapping node
    return wikidata.load(cfg.files, relations, include, int(cfg.num_facts), int(cfg.seed))
