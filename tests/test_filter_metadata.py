"""Metadata blacklist and early-game keyword regexes on real-looking video titles."""

from __future__ import annotations

import pytest

from vpt_ray.filter.metadata import (
    BLACKLIST,
    blacklist_match,
    early_game_match,
    is_blacklisted,
    is_early_game,
)

BLACKLISTED = [
    ("Minecraft PS4 Edition - Survival Let's Play", "ps4"),
    ("minecraft ps3 survival world tour", "ps3"),
    ("Minecraft on the PS5?!", "ps5"),
    ("Minecraft Xbox 360 Edition | Survival #4", "xbox 360"),
    ("MINECRAFT XBOX360 HUNGER GAMES", "xbox 360"),
    ("Minecraft PlayStation 4 Edition Tutorial World", "playstation"),
    ("Building a castle in Minecraft - TIMELAPSE", "timelapse"),
    ("Minecraft mega base time-lapse (100 hours)", "timelapse"),
    ("Epic Minecraft Timelapses compilation", "timelapse"),
    ("Minecraft Multiplayer Survival w/ friends", "multiplayer"),
    ("multi-player factions raid", "multiplayer"),
    ("Minecraft PE 1.19 survival", "minecraft pe"),
    ("minecraft pocket edition seeds", "pocket edition"),
    ("Hypixel SkyBlock money guide", "skyblock"),
    ("Sky Block island challenge", "skyblock"),
    ("REALISTIC MINECRAFT - Steve's life", "realistic minecraft"),
    ("How To Install Optifine 1.20", "how to install"),
    ("how to download minecraft for free", "how to download"),
    ("RealmCraft - the best Minecraft copy?", "realmcraft"),
    ("Minecraft Animation - Alex and Steve", "animation"),
    ("Top 5 minecraft animations of 2021", "animation"),
]

NOT_BLACKLISTED = [
    "Minecraft Survival Let's Play Episode 47",
    "Speedrunning Minecraft 1.16 any% glitchless",
    "I built a house in hardcore Minecraft",
    "Mining diamonds at Y=-58 in 1.18",
    "GPS40 tracker review",  # "ps4" inside a word
    "Pepe's journey",  # "pe" not after "minecraft"
    "Skyline build tour",  # not skyblock
    "The animator's Minecraft let's play",  # animator is not animation
    "Installing a new CPU cooler",  # not "how to install"
    "Xbox One controller on PC",
]


@pytest.mark.parametrize("title,term", BLACKLISTED)
def test_blacklist_positives(title, term):
    assert blacklist_match(title) == term
    assert is_blacklisted(title)
    assert term in BLACKLIST


@pytest.mark.parametrize("title", NOT_BLACKLISTED)
def test_blacklist_negatives(title):
    assert blacklist_match(title) is None, title


def test_blacklist_searches_description_too():
    assert blacklist_match("My survival world", "Recorded on my PS4 last night") == "ps4"
    assert blacklist_match("My survival world", "Recorded on PC, no mods") is None


EARLY_GAME = [
    ("Minecraft Survival Episode 1 - A New Adventure", "episode 1"),
    ("Let's Play Minecraft Ep 1", "episode 1"),
    ("Minecraft Hardcore EP1", "episode 1"),
    ("Ep. 1 | Punching trees", "episode 1"),
    ("Minecraft Survival - Episode #1", "episode 1"),
    ("Minecraft Survival Episode 01", "episode 1"),
    ("Hardcore Minecraft Day 1", "episode 1"),
    ("100 Days in Minecraft - day-1 recap", "episode 1"),
    ("Vanilla SMP Session 1", "episode 1"),
    ("Chill survival sesh 1", "episode 1"),
    ("Chapter 1: The Forest", "episode 1"),
    ("Minecraft Chap. 1", "episode 1"),
    ("Survival Series 1", "episode 1"),
    ("Minecraft 1.20 Survival Part 1", "episode 1"),
    ("Minecraft Supervivencia Parte 1", "episode 1"),
    ("Minecraft Survival Pt 1", "episode 1"),
    ("Minecraft Survival pt.1", "episode 1"),
    ("Survival Round 1", "episode 1"),
    ("Minecraft Survival Bölüm 1", "episode 1"),
    ("Minecraft Supervivencia Episodio 1", "episode 1"),
    ("Minecraft Hardcore Eps 1", "episode 1"),
    ("EPISODE 1: the beginning", "episode 1"),
    ("Let's start a Minecraft world!", "start"),
    ("Starting over in hardcore", "start"),
    ("Back to the Beginning - survival", "beginning"),
    ("A brand new world | Minecraft 1.21", "new world"),
    ("Fresh Minecraft game, no mods", "new world"),
    ("Clean playthrough of vanilla Minecraft", "new world"),
    ("Beating Minecraft from scratch", "from scratch"),
]

NOT_EARLY_GAME = [
    "Minecraft Survival Episode 12",
    "Minecraft Survival Ep 10 - Iron farm",
    "Hardcore Minecraft Day 100",
    "Hardcore Minecraft Day 21",
    "Minecraft Survival Part 11",
    "Survival Parte 13",
    "Minecraft Chapter 2",
    "Episode 1.5 - bonus",
    "Bölüm 15",
    "Minecraft Survival #1",  # a bare number is not an episode word
    "Sleep 1 night in the nether",  # "ep" inside a word
    "Minecraft 1.20 Survival",  # version number, no episode word
    "Restarting my server",  # "start" inside a word
    "Diamond mining guide (1.21)",
    "Top 10 redstone builds",
]


@pytest.mark.parametrize("title,keyword", EARLY_GAME)
def test_early_game_positives(title, keyword):
    assert early_game_match(title) == keyword, title
    assert is_early_game(title)


@pytest.mark.parametrize("title", NOT_EARLY_GAME)
def test_early_game_negatives(title):
    assert early_game_match(title) is None, title


def test_early_game_description_and_line_scope():
    assert is_early_game("Minecraft Survival #37", "This is episode 1 of my old series")
    # "new ... world" must be on one line: a "new" in the title does not pair with "world" in the description
    assert not is_early_game("New shaders!", "best world tour")
    assert not is_early_game("Showcasing new shaders\nbest world tour")
