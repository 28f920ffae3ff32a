"""A scripted Crafter player: the "contractor" whose play the labeled and unlabeled recordings show.

It plays the way a competent human does, reading only the game state (``env._world``, ``env._player``) and
acting through the env's action interface (one int per step):

- it only knows the tiles it has had on screen (the 9x7 local view), remembering them, and explores towards the
  edge of what it has seen when it does not know where something is;
- it walks by shortest paths (Dial's algorithm over the tile grid; mining through stone and cutting through
  trees cost one extra step), never into lava;
- it follows the tech tree (wood -> table -> wood pickaxe -> stone -> stone pickaxe -> coal, iron -> furnace ->
  iron pickaxe -> diamonds), placing a new table where the old one is far away, and makes swords with spare
  resources;
- it survives: it drinks and eats before it is desperate, fights zombies and skeletons next to it, steps back
  from them when hurt, and sleeps when tired, first digging into a two-tile pocket and sealing it with a stone.

Noise makes the play look human and gives the inverse dynamics model every action to learn: with probability
``epsilon`` an action is random (but never a step into lava), and with probability ``hesitation`` the player
pauses (noops) for a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vpt_ray.actions.crafter import CRAFTER_ACTION_INDEX as A
from vpt_ray.actions.crafter import CRAFTER_ACTIONS

# (dx, dy) of each move action; crafter's world is indexed [x, y] with y growing downwards.
MOVES: dict[tuple[int, int], int] = {
    (-1, 0): A["move_left"],
    (1, 0): A["move_right"],
    (0, -1): A["move_up"],
    (0, 1): A["move_down"],
}
DIRS: tuple[tuple[int, int], ...] = tuple(MOVES)
WALKABLE = ("grass", "sand", "path")  # for the player and for zombies, skeletons and cows
_INF = 1 << 30


@dataclass(frozen=True)
class DemonstratorConfig:
    epsilon: float = 0.03  # probability of a random (safe) action
    hesitation: float = 0.02  # probability of starting a pause
    max_pause: int = 6  # a pause lasts 1..max_pause noops
    omniscient: bool = False  # True: know the whole map instead of only the tiles seen so far
    far_table: int = 12  # path cost beyond which a new table is placed (if the wood allows) instead of walking
    drink_low: int = 3  # start drinking at or below this, and drink until full
    food_low: int = 3
    top_up: int = 6  # in broad daylight (few zombies about), drink and eat already at or below this
    bright: float = 0.8  # daylight above which zombies despawn
    energy_low: int = 3  # look for a shelter and sleep at or below this
    dusk: float = 0.45  # at night (daylight below this) the player shelters until it is light again
    rest_health: int = 3  # shelter at or below this health until it has recovered
    wood_reserve: int = 6  # wood gathered before the first table: table, pickaxe, sword and one to spare

    def __post_init__(self):
        for name in ("epsilon", "hesitation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DemonstratorConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.max_pause < 1:
            raise ValueError(f"DemonstratorConfig.max_pause must be >= 1, got {self.max_pause}")


def unwrap_crafter(env: Any):
    """The ``crafter.Env`` inside ``env``: itself, or found through the wrappers' attributes (gymnasium wrappers'
    ``env``, :class:`vpt_ray.envs.TaskEnv`'s ``sim``, an in-process robust wrapper, ``CrafterSim.game``)."""
    import crafter

    seen, todo = set(), [env]
    while todo:
        obj = todo.pop(0)
        if isinstance(obj, crafter.Env):
            return obj
        if obj is None or id(obj) in seen or len(seen) > 32:
            continue
        seen.add(id(obj))
        todo.extend(getattr(obj, name, None) for name in ("game", "sim", "_backend", "env", "unwrapped"))
    raise TypeError(
        f"{type(env).__name__} does not hold a crafter.Env in this process: the scripted player reads the game "
        "state (build the env with make_env(task, robust=False) or isolation: inprocess)"
    )


class CrafterDemonstrator:
    """Scripted player. ``reset(env)`` at each episode start, then ``act(env) -> int`` before each step.

    ``goal`` names what the player is doing (e.g. ``"collect iron"``), for logs and recordings.
    """

    def __init__(self, config: DemonstratorConfig | None = None, seed: int | None = None):
        import crafter

        self.config = config or DemonstratorConfig()
        self.rng = np.random.default_rng(seed)
        self._collect = crafter.constants.collect
        self._place = crafter.constants.place
        self._make = crafter.constants.make
        self._max = {name: info["max"] for name, info in crafter.constants.items.items()}
        self.goal = "start"
        self._game = None

    # -- episode bookkeeping ------------------------------------------------------------------------------------
    def reset(self, env: Any) -> None:
        self._game = unwrap_crafter(env)
        self._player = self._game._player
        world = self._game._world
        self._ids = dict(world._mat_ids)
        self._seen = np.zeros(world.area, bool)
        self._pause = 0
        self._mode: str | None = None  # survival mode kept until satisfied: "drink", "eat" or "shelter"
        self._pocket: tuple | None = None
        self._explore_target: int | None = None
        self._last_pos: tuple[int, int] | None = None
        self._still = 0
        self._unstick = 0
        self._cows: set[tuple[int, int]] = set()  # where cows were last seen, for when none is on screen
        self.goal = "start"

    def act(self, env: Any) -> int:
        game = unwrap_crafter(env)
        if game is not self._game or game._player is not self._player:  # a new env or a new episode
            self.reset(env)
        player = game._player
        self._observe(game)
        if player.sleeping:
            self.goal = "sleep"
            return A["noop"]
        cfg = self.config
        # Nobody dawdles with a monster at arm's length.
        threatened = any(self._dist(m.pos) <= 2 for m in self._monsters())
        if threatened:
            self._pause = 0
        if self._pause > 0:
            self._pause -= 1
            return A["noop"]
        if cfg.hesitation and not threatened and self.rng.random() < cfg.hesitation:
            self._pause = int(self.rng.integers(0, cfg.max_pause))
            self.goal = "hesitate"
            return A["noop"]
        if cfg.epsilon and self.rng.random() < cfg.epsilon:
            return self._safe(int(self.rng.integers(len(CRAFTER_ACTIONS))))
        if self._unstick > 0:
            self._unstick -= 1
            self.goal = "unstick"
            return self._random_move()
        action = self._decide()
        self._track_progress(action)
        return self._safe(action)

    # -- perception ---------------------------------------------------------------------------------------------
    def _observe(self, game) -> None:
        world, player = game._world, game._player
        self.pos = (int(player.pos[0]), int(player.pos[1]))
        self.facing = (int(player.facing[0]), int(player.facing[1]))
        self.inv = player.inventory
        self.mat = world._mat_map
        self.W, self.H = world.area
        hx, hy = (int(v) // 2 for v in game._local_view._grid)  # the screen shows pos +- (hx, hy) tiles
        self._view = (slice(max(self.pos[0] - hx, 0), self.pos[0] + hx + 1),
                      slice(max(self.pos[1] - hy, 0), self.pos[1] + hy + 1))  # fmt: skip
        self._seen[self._view] = True
        if self.config.omniscient:
            self._seen[:] = True
        self.objects = [
            o for o in world.objects
            if o is not player and abs(o.pos[0] - self.pos[0]) <= hx and abs(o.pos[1] - self.pos[1]) <= hy
        ]  # fmt: skip
        self.occupied = world._obj_map != 0
        self.occupied[self.pos] = False
        walk = np.isin(self.mat, [self._ids[m] for m in WALKABLE])
        self.free = walk & ~self.occupied
        self.lava = self.mat == self._ids["lava"]
        # Tiles passable after one "do": collecting them leaves a walkable tile and the tool is at hand.
        minable = np.zeros_like(walk)
        for material, info in self._collect.items():
            if info["leaves"] in WALKABLE and material not in WALKABLE and material in self._ids:
                if all(self.inv[k] >= v for k, v in info["require"].items()):
                    minable |= self.mat == self._ids[material]
        self.minable = minable
        self.cost = np.where(self.free, 1, np.where(minable, 2, 0)).astype(np.int64)
        # Keep out of a skeleton's range (it shoots at players within 5 tiles) and give zombies a wide berth: a
        # zombie that reaches the player hits at once.
        for m in self._monsters():
            r, extra = (5, 4) if type(m).__name__ == "Skeleton" else (2, 3)
            x, y = int(m.pos[0]), int(m.pos[1])
            near = self.cost[max(x - r, 0) : x + r + 1, max(y - r, 0) : y + r + 1]
            near[near > 0] += extra
        self.cost[~self._seen] = 0
        self.cost[self.pos] = 1
        for o in self.objects:
            if type(o).__name__ == "Cow":
                self._cows.add((int(o.pos[0]), int(o.pos[1])))
        visible = self._view_mask()
        self._cows = {c for c in self._cows if not visible[c] or self.occupied[c]}

    def _view_mask(self) -> np.ndarray:
        mask = np.zeros_like(self._seen)
        mask[self._view] = True
        return mask

    def _dist(self, p) -> int:
        return abs(int(p[0]) - self.pos[0]) + abs(int(p[1]) - self.pos[1])

    def _tile(self, p: tuple[int, int]) -> str | None:
        if not (0 <= p[0] < self.W and 0 <= p[1] < self.H):
            return None
        return self._game._world._mat_names[int(self.mat[p])]

    def _facing_tile(self) -> tuple[int, int]:
        return (self.pos[0] + self.facing[0], self.pos[1] + self.facing[1])

    def _mask(self, material: str) -> np.ndarray:
        if material not in self._ids:
            return np.zeros_like(self._seen)
        return (self.mat == self._ids[material]) & self._seen

    # -- path finding -------------------------------------------------------------------------------------------
    def _search(self, goal: np.ndarray, max_cost: int = _INF, full: bool = False):
        """Dial's shortest paths from the player over ``self.cost`` to the nearest ``goal`` tile.

        Returns ``(goal_index, first_dir, dist)`` for the nearest goal (``None`` if unreachable); with ``full``
        it searches everything within ``max_cost`` and returns the distance list instead.
        """
        H = self.H
        cost = self.cost.ravel().tolist()
        goal_l = goal.ravel().tolist()
        n = len(cost)
        start = self.pos[0] * H + self.pos[1]
        dist = [_INF] * n
        first = [-1] * n
        dist[start] = 0
        buckets: list[list[int]] = [[start], [], []]
        c = 0
        pending = 1
        while pending and c <= max_cost:
            bucket = buckets[c] if c < len(buckets) else []
            for u in bucket:
                pending -= 1
                if dist[u] != c:
                    continue
                if goal_l[u] and not full:
                    return u, DIRS[first[u]] if first[u] >= 0 else None, c
                x, y = divmod(u, H)
                for k, (dx, dy) in enumerate(DIRS):
                    nx, ny = x + dx, y + dy
                    if not (0 <= nx < self.W and 0 <= ny < H):
                        continue
                    v = nx * H + ny
                    w = cost[v]
                    if w == 0:
                        continue
                    nd = c + w
                    if nd < dist[v]:
                        dist[v] = nd
                        first[v] = k if u == start else first[u]
                        while len(buckets) <= nd:
                            buckets.append([])
                        buckets[nd].append(v)
                        pending += 1
            c += 1
        if full:
            return dist
        return None

    def _step_toward(self, d: tuple[int, int]) -> int:
        """First action of a path step in direction ``d``: move, or turn to and mine the tile in the way."""
        target = (self.pos[0] + d[0], self.pos[1] + d[1])
        if self.minable[target] and not self.free[target]:
            return A["do"] if self.facing == d else MOVES[d]
        return MOVES[d]

    def _go(self, goal: np.ndarray, max_cost: int = _INF) -> int | None:
        found = self._search(goal, max_cost)
        if found is None:
            return None
        _, d, _ = found
        return A["noop"] if d is None else self._step_toward(d)

    def _adjacent(self, mask: np.ndarray) -> np.ndarray:
        """Tiles 4-adjacent to ``mask``."""
        out = np.zeros_like(mask)
        out[1:, :] |= mask[:-1, :]
        out[:-1, :] |= mask[1:, :]
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
        return out

    @staticmethod
    def _near(mask: np.ndarray) -> np.ndarray:
        """Tiles whose 3x3 neighbourhood touches ``mask`` (crafter's "nearby" test for crafting)."""
        out = mask.copy()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                shifted = np.zeros_like(mask)
                xs = slice(max(dx, 0), mask.shape[0] + min(dx, 0))
                xd = slice(max(-dx, 0), mask.shape[0] + min(-dx, 0))
                ys = slice(max(dy, 0), mask.shape[1] + min(dy, 0))
                yd = slice(max(-dy, 0), mask.shape[1] + min(-dy, 0))
                shifted[xs, ys] = mask[xd, yd]
                out |= shifted
        return out

    def _interact(self, targets: np.ndarray, verb: str = "do") -> int | None:
        """Walk next to one of ``targets`` (non-walkable tiles or creatures), face it and apply ``verb``."""
        if targets[self._facing_tile()] if self._inside(self._facing_tile()) else False:
            return A[verb]
        for d in DIRS:
            p = (self.pos[0] + d[0], self.pos[1] + d[1])
            if self._inside(p) and targets[p]:
                return MOVES[d]  # the tile is blocked, so this only turns the player
        stand = self._adjacent(targets) & (self.cost > 0)
        return self._go(stand)

    def _inside(self, p: tuple[int, int]) -> bool:
        return 0 <= p[0] < self.W and 0 <= p[1] < self.H

    def _explore(self) -> int:
        """Head for the nearest seen walkable tile next to unseen ones (a new target when that one is reached)."""
        self.goal = f"{self.goal} (exploring)"
        if self._explore_target is not None:
            tx, ty = divmod(self._explore_target, self.H)
            if (tx, ty) == self.pos or self.cost[tx, ty] == 0 or self._seen_around(tx, ty):
                self._explore_target = None
        if self._explore_target is None:
            frontier = self._adjacent(~self._seen) & self._seen & (self.cost > 0)
            frontier[self.pos] = False
            found = self._search(frontier)
            if found is None:
                # Everything reachable has been seen: wander to a random far tile (cows and zombies move).
                dist = np.asarray(self._search(frontier, max_cost=40, full=True))
                far = np.flatnonzero((dist >= 10) & (dist < _INF))
                if not len(far):
                    return self._random_move()
                found = (int(far[self.rng.integers(len(far))]),)
            self._explore_target = found[0]
        goal = np.zeros_like(self._seen)
        goal.ravel()[self._explore_target] = True
        action = self._go(goal)
        if action is None:
            self._explore_target = None
            return self._random_move()
        return action

    def _seen_around(self, x: int, y: int) -> bool:
        return bool(self._seen[max(x - 1, 0) : x + 2, max(y - 1, 0) : y + 2].all())

    def _random_move(self) -> int:
        options = [d for d in DIRS if self._inside(self._step(d)) and self.free[self._step(d)]]
        if not options:
            return A["noop"]
        return MOVES[options[int(self.rng.integers(len(options)))]]

    def _step(self, d: tuple[int, int]) -> tuple[int, int]:
        return (self.pos[0] + d[0], self.pos[1] + d[1])

    def _safe(self, action: int) -> int:
        """Never step into lava (the only move that kills outright), nor doze off outside a shelter."""
        if action == A["sleep"] and not self._enclosed():
            return A["noop"]
        for d, move in MOVES.items():
            if action == move and self._inside(self._step(d)) and self.lava[self._step(d)]:
                return A["noop"]
        return action

    def _track_progress(self, action: int) -> None:
        """After a long time without moving while trying to move, take a few random steps."""
        if action in MOVES.values() and self.pos == self._last_pos:
            self._still += 1
        else:
            self._still = 0
        self._last_pos = self.pos
        if self._still >= 12:
            self._still = 0
            self._unstick = int(self.rng.integers(3, 8))
            self._explore_target = None

    # -- decisions ----------------------------------------------------------------------------------------------
    def _decide(self) -> int:
        cfg, inv = self.config, self.inv
        fight = self._fight()
        if fight is not None:
            return fight
        # Survival modes stay on until the need is met, like a player who tops up once they go for water.
        full = self._max
        daylight = self._game._world.daylight
        dark = daylight < cfg.dusk
        # Trips to water and cows cross grass, where zombies roam unless it is broad daylight: top up then, so
        # that the dusk, the night (sealed in) and the dawn need no trip.
        bright = daylight > cfg.bright
        if self._mode == "drink" and inv["drink"] >= full["drink"]:
            self._mode = None
        if self._mode == "eat" and inv["food"] >= full["food"] - 2:
            self._mode = None
        rested = inv["energy"] >= full["energy"] and inv["health"] > cfg.rest_health + 2
        if self._mode == "shelter" and rested and not dark:
            self._mode, self._pocket = None, None
        if self._mode is None:
            thirsty = inv["drink"] <= (cfg.top_up if bright else cfg.drink_low)
            hungry = inv["food"] <= (cfg.top_up if bright else cfg.food_low)
            if thirsty or (inv["drink"] <= full["drink"] - 3 and self._close("water", 2)):
                self._mode = "drink"
            elif hungry or (inv["food"] <= full["food"] - 3 and self._close("cow", 3)):
                self._mode = "eat"
            elif inv["energy"] <= cfg.energy_low or inv["health"] <= cfg.rest_health or dark:
                self._mode = "shelter"
        # Out of the shelter at night only when starving would cost more than the zombies outside.
        if self._mode == "shelter" and min(inv["drink"], inv["food"]) <= (1 if dark else 2):
            self._mode = "drink" if inv["drink"] <= inv["food"] else "eat"
        if self._mode is not None:
            action = {"drink": self._drink, "eat": self._eat, "shelter": self._shelter}[self._mode]()
            if action is not None:
                return action
        return self._progress()

    def _monsters(self) -> list:
        from crafter import objects

        return [o for o in self.objects if isinstance(o, (objects.Zombie, objects.Skeleton))]

    def _fight(self) -> int | None:
        """Hit a monster next to the player; step out of the way of an arrow flying at it."""
        monsters = self._monsters()
        for m in monsters:
            d = (int(m.pos[0]) - self.pos[0], int(m.pos[1]) - self.pos[1])
            if d in MOVES:
                self.goal = f"fight {type(m).__name__.lower()}"
                return A["do"] if self.facing == d else MOVES[d]
        for arrow in self.objects:
            if type(arrow).__name__ == "Arrow" and self._in_flight_path(arrow):
                f = (int(arrow.facing[0]), int(arrow.facing[1]))
                for d in ((f[1], f[0]), (-f[1], -f[0])):
                    if self._inside(self._step(d)) and self.free[self._step(d)]:
                        self.goal = "dodge arrow"
                        return MOVES[d]
        return None

    def _in_flight_path(self, arrow) -> bool:
        x, y = int(arrow.pos[0]), int(arrow.pos[1])
        fx, fy = int(arrow.facing[0]), int(arrow.facing[1])
        for _ in range(5):
            x, y = x + fx, y + fy
            if (x, y) == self.pos:
                return True
            if not self._inside((x, y)) or not (self.free[x, y] or self._tile((x, y)) in ("water", "lava")):
                return False
        return False

    def _drink(self) -> int | None:
        self.goal = "drink"
        action = self._interact(self._mask("water"))
        return action if action is not None else self._explore()

    def _cow_mask(self) -> np.ndarray:
        cows = np.zeros_like(self._seen)
        for o in self.objects:
            if type(o).__name__ == "Cow":
                cows[int(o.pos[0]), int(o.pos[1])] = True
        return cows

    def _close(self, what: str, radius: int) -> bool:
        """Whether some water (or a cow) is within ``radius`` tiles (Manhattan) on screen."""
        mask = self._cow_mask() if what == "cow" else self._mask(what) & self._view_mask()
        xs, ys = np.nonzero(mask)
        return bool(len(xs)) and int((np.abs(xs - self.pos[0]) + np.abs(ys - self.pos[1])).min()) <= radius

    def _eat(self) -> int | None:
        self.goal = "eat cow"
        action = self._interact(self._cow_mask())
        if action is None and self._cows:
            remembered = np.zeros_like(self._seen)
            remembered[tuple(np.array(sorted(self._cows)).T)] = True
            action = self._go(remembered & (self.cost > 0))
        return action if action is not None else self._explore()

    # -- sleeping in a sealed pocket ----------------------------------------------------------------------------
    def _shelter(self) -> int | None:
        """Dig into a pocket, seal it, and sleep (or wait for the day and for health once rested)."""
        self.goal = "shelter"
        if self._enclosed():
            return A["sleep"] if self.inv["energy"] < self._max["energy"] else A["noop"]
        if self._pocket is None or not self._pocket_valid(self._pocket):
            self._pocket = self._find_pocket()
        if self._pocket is None:
            # No shelter around: sleep in the open once exhausted, else keep playing and look again later.
            return A["sleep"] if self.inv["energy"] <= 1 else None
        c, a, b, d = self._pocket
        back = (-d[0], -d[1])
        if self.pos == b:
            return MOVES[back]  # step back into a, which turns the player towards c
        if self.pos == a and self.facing == back:
            return A["place_stone"] if self.free[c] else A["noop"]  # wait for a creature to leave c
        if self.pos == a and self.facing == d:
            return self._step_toward(d)
        if self.pos == c and self.facing == d:
            return self._step_toward(d)
        goal = np.zeros_like(self._seen)
        goal[c] = True
        if self.pos == c:
            return MOVES[d]  # a is stone (turn towards it) or free (walk in)
        action = self._go(goal, max_cost=60)
        if action is None:
            self._pocket = None
            return A["sleep"] if self.inv["energy"] <= 1 else None
        return action

    def _enclosed(self) -> bool:
        """Whether the walkable region around the player is tiny and shut: nothing can walk in while asleep."""
        walk = np.isin(self.mat, [self._ids[m] for m in WALKABLE])
        region, frontier = {self.pos}, [self.pos]
        while frontier:
            p = frontier.pop()
            for d in DIRS:
                q = (p[0] + d[0], p[1] + d[1])
                if self._inside(q) and walk[q] and q not in region:
                    region.add(q)
                    if len(region) > 4:
                        return False
                    frontier.append(q)
        return not any(tuple(int(v) for v in m.pos) in region for m in self._monsters())

    def _solid(self, p: tuple[int, int]) -> bool:
        return not self._inside(p) or self._tile(p) not in WALKABLE

    def _pocket_valid(self, pocket: tuple) -> bool:
        c, a, b, d = pocket
        if self.pos in (a, b):
            return True
        return self._pocket_ok(c, d) is not None

    def _pocket_ok(self, c: tuple[int, int], d: tuple[int, int]) -> int | None:
        """Cost of digging into the two tiles beyond ``c`` in direction ``d`` (None if they make no shelter)."""
        a = (c[0] + d[0], c[1] + d[1])
        b = (a[0] + d[0], a[1] + d[1])
        if not (self._inside(a) and self._inside(b)):
            return None
        extra, stones = 0, self.inv["stone"]
        for p in (a, b):
            tile = self._tile(p)
            if self.free[p]:
                continue
            if tile == "stone" and self.minable[p]:
                extra, stones = extra + 1, stones + 1
            else:
                return None
        if stones < 1:
            return None
        perp = (d[1], d[0])
        walls = [
            (a[0] + perp[0], a[1] + perp[1]), (a[0] - perp[0], a[1] - perp[1]),
            (b[0] + perp[0], b[1] + perp[1]), (b[0] - perp[0], b[1] - perp[1]),
            (b[0] + d[0], b[1] + d[1]),
        ]  # fmt: skip
        if not all(self._solid(w) for w in walls):
            return None
        return extra

    def _find_pocket(self):
        dist = self._search(np.zeros_like(self._seen), max_cost=40, full=True)
        best, best_cost = None, _INF
        for u, du in enumerate(dist):
            if du >= best_cost:
                continue
            c = divmod(u, self.H)
            if not self.free[c] and c != self.pos:
                continue
            for d in DIRS:
                extra = self._pocket_ok(c, d)
                if extra is not None and du + 2 * extra < best_cost:
                    a = (c[0] + d[0], c[1] + d[1])
                    best = (c, a, (a[0] + d[0], a[1] + d[1]), d)
                    best_cost = du + 2 * extra
        return best

    # -- the tech tree ------------------------------------------------------------------------------------------
    def _progress(self) -> int:
        inv = self.inv
        wood_for = {name: self._make[name]["uses"].get("wood", 0) for name in self._make}
        table_wood = self._place["table"]["uses"]["wood"]
        furnace_stone = self._place["furnace"]["uses"]["stone"]
        if not inv["wood_pickaxe"]:
            if inv["wood"] < min(self.config.wood_reserve, self._max["wood"]) and not self._table_near(30):
                return self._gather("wood")
            return self._craft("wood_pickaxe")
        if not inv["stone_pickaxe"]:
            # One more of each for a stone sword, made at the same table.
            if inv["wood"] < wood_for["stone_pickaxe"] + 1:
                return self._gather("wood")
            if inv["stone"] < 2:
                return self._gather("stone")
            return self._craft("stone_pickaxe")
        if not inv["iron_pickaxe"]:
            # Enough wood for the pickaxe and a table by the furnace, coal, iron, stone for the furnace.
            if inv["wood"] < wood_for["iron_pickaxe"] + table_wood:
                return self._gather("wood")
            if inv["coal"] < 1:
                return self._gather("coal")
            if inv["stone"] < furnace_stone + 1 and not self._furnace_by_table(40):
                return self._gather("stone")
            if inv["iron"] < 1:
                return self._gather("iron")
            return self._craft("iron_pickaxe")
        if not inv["iron_sword"] and all(inv[k] >= v for k, v in self._make["iron_sword"]["uses"].items()):
            return self._craft("iron_sword")
        if inv["stone"] < 3:
            return self._gather("stone")
        return self._gather("diamond")

    def _gather(self, item: str) -> int:
        """Collect ``item`` from the nearest tile that gives it (wood from trees, ...), exploring if none is known."""
        self.goal = f"collect {item}"
        sources = np.zeros_like(self._seen)
        for material, info in self._collect.items():
            if item in info["receive"] and material not in WALKABLE:
                sources |= self._mask(material)
        action = self._interact(sources)
        return action if action is not None else self._explore()

    def _table_near(self, max_cost: int) -> bool:
        near = self._near(self._mask("table")) & (self.cost > 0)
        return self._search(near, max_cost) is not None

    def _furnace_by_table(self, max_cost: int) -> bool:
        near = self._near(self._mask("table")) & self._near(self._mask("furnace")) & (self.cost > 0)
        return self._search(near, max_cost) is not None

    def _craft(self, item: str) -> int:
        """Make ``item``, at a known table (and furnace) or at one placed here if the way back is long."""
        for k, v in self._make[item]["uses"].items():
            if self.inv[k] < v:
                return self._gather(k)
        self.goal = f"make {item}"
        needs = self._make[item]["nearby"]
        masks = {station: self._near(self._mask(station)) for station in needs}
        if all(masks[s][self.pos] for s in needs):
            action = A[f"make_{item}"]
            # Spare resources go into a sword first, as players do while standing at the table.
            sword = {"wood_pickaxe": "wood_sword", "stone_pickaxe": "stone_sword"}.get(item)
            if sword and not self.inv[sword] and self._affordable(sword, reserve=item):
                action = A[f"make_{sword}"]
            return action
        stand = np.ones_like(self._seen)
        for s in needs:
            stand &= masks[s]
        stand &= self.cost > 0
        found = self._search(stand, max_cost=self.config.far_table)
        if found is not None:
            return self._go(stand)
        # No station within a short walk: build one here if the inventory allows, else walk to a known one.
        if "table" in needs and not masks["table"][self.pos]:
            if self._affordable_place("table", item):
                return self._place_here("table")
            action = self._go(masks["table"] & (self.cost > 0))
            return action if action is not None else self._gather("wood")
        if "furnace" in needs and not masks["furnace"][self.pos]:
            if self._affordable_place("furnace", item):
                return self._place_here("furnace")  # next to the table the player stands by
            return self._gather("stone")
        return self._random_move()

    def _affordable_place(self, name: str, item: str) -> bool:
        need = dict(self._make[item]["uses"])
        for k, v in self._place[name]["uses"].items():
            need[k] = need.get(k, 0) + v
        return all(self.inv[k] >= v for k, v in need.items())

    def _affordable(self, item: str, reserve: str) -> bool:
        need = dict(self._make[reserve]["uses"])
        for k, v in self._make[item]["uses"].items():
            need[k] = need.get(k, 0) + v
        return all(self.inv[k] >= v for k, v in need.items())

    def _place_here(self, name: str) -> int:
        """Place ``name`` on the faced tile; if it cannot go there, step so that the player faces one that can.

        A free tile can only be faced by walking towards it, so a step that ends facing a placeable tile (and,
        for a furnace, keeps the table within reach) is taken.
        """
        self.goal = f"place {name}"
        where = self._place[name]["where"]
        keep = self._near(self._mask("table")) if name == "furnace" else np.ones_like(self._seen)

        def placeable(p):
            return self._inside(p) and self._tile(p) in where and not self.occupied[p] and not self.lava[p]

        if placeable(self._facing_tile()) and keep[self.pos]:
            return A[f"place_{name}"]
        for d in DIRS:
            p = self._step(d)
            beyond = (p[0] + d[0], p[1] + d[1])
            if self._inside(p) and self.free[p] and keep[p] and placeable(beyond):
                return MOVES[d]
        if not keep[self.pos]:
            action = self._go(keep & (self.cost > 0))
            if action is not None:
                return action
        return self._random_move()
