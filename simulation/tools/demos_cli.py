"""``resetfree-demos``: generate demos with the scripted experts, import EARL's demos, and
inspect demo files. Every file it writes is in the ``protocol.demos`` format; ``export``,
``import`` and ``export-run`` convert to and from LeRobotDataset v3 (:mod:`simulation.tools.lerobot_io`).

    resetfree-demos generate --task door --direction forward --out door_fwd.npz
    resetfree-demos import-earl demo_data.pkl --task door --direction forward --out d.npz
    resetfree-demos inspect d.npz --sheet d.png
    resetfree-demos record --robot sim:cube --teleop keyboard --episodes 5 --out cube_fwd.npz
    resetfree-demos export --format lerobot d.npz d_lerobot/       # LeRobotDataset v3 (the lerobot extra)
    resetfree-demos import d_lerobot/ d.npz [--task door --direction forward]
    resetfree-demos export-run runs/20260101-120000 practice_lerobot/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hardware.interfaces import HardwareError
from protocol.demos import DemoFormatError, DemoMeta, DemoRecorder, Demos, load_demos, save_demos
from simulation.cli import doc_help
from simulation.earl_import import EarlImportError, earl_to_demos, episode_goals, load_earl_arrays, relabel_goals
from simulation.experts import Expert, get_expert
from simulation.tools.lerobot_io import add_lerobot_parsers, run_lerobot
from simulation.tools.record import add_record_parser, run_record
from simulation.tasks import make, task_info
from simulation.tasks.base import SimulationError, TaskEnv

logger = logging.getLogger(__name__)

CUBE_DEFAULT_EPISODES = 50
"""The cube grasp is learned from more, noisier demos (yaw and position vary per reset)."""
EARL_DEFAULT_EPISODES = 10


class CliError(SimulationError):
    """A user error the CLI reports as one line (bad arguments, a task lacking a feature)."""


# ---------------------------------------------------------------------- generate
def generate(task: str, direction: str, *, episodes: int, obs: str = "state", seed: int = 0,
             noise: float = 0.0, image_size: int = 84, split: str | None = None,
             max_steps: int | None = None) -> Demos:
    """Runs the scripted expert for ``episodes`` episodes and returns the recording.

    Forward episodes start from the initial-state distribution, backward ones from the goal
    distribution; each runs until the expert is done or ``max_steps`` (default: the eval
    horizon). An episode's success is the task's success at any step (forward) or
    ``backward_success()`` / the expert's goal (backward). Blocks while simulating.

    Raises:
        ValueError: for an unknown task or direction, or bad counts.
    """
    if episodes <= 0:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    info = task_info(task)
    max_steps = max_steps or info.eval_horizon
    env = make(task, obs=obs, image_size=image_size)
    expert = get_expert(task, direction, noise=noise, seed=seed)
    options: dict[str, Any] = {"init": "initial" if direction == "forward" else "goal"}
    if split is not None:
        options["split"] = split
    recorder = DemoRecorder()
    try:
        for index in range(episodes):
            observation, _ = env.reset(seed=seed + index, options=options)
            success, steps = _record_episode(env, expert, direction, observation, recorder, max_steps)
            logger.info("%s %s episode %d/%d: %d steps, success=%s", task, direction, index + 1, episodes,
                        steps, success)
    finally:
        env.close()
    meta = DemoMeta(task=task, direction=direction, obs_mode=obs,
                    cameras=tuple(env.cameras) + tuple(env._task_extra_image_names()) if obs == "pixels" else (),
                    image_size=image_size if obs == "pixels" else None, source="expert",
                    notes={"seed": seed, "noise": noise, "max_steps": max_steps, **({"split": split} if split else {})})
    return recorder.build(meta)


def _record_episode(env: TaskEnv, expert: Expert, direction: str, observation: Any,
                    recorder: DemoRecorder, max_steps: int) -> tuple[bool, int]:
    expert.reset(env)
    recorder.start(_as_dict(observation))
    success, done, steps = False, False, 0
    for steps in range(1, max_steps + 1):
        action = expert.act(env, observation)
        observation, reward, _, _, info = env.step(action)
        recorder.step(action, reward, _as_dict(observation))
        success = success or _direction_success(env, expert, direction, info)
        done = expert.done(env)
        if done:
            break
    recorder.end(success=success, terminal=done)
    return success, steps


def _direction_success(env: TaskEnv, expert: Expert, direction: str, info: dict[str, Any]) -> bool:
    if direction == "forward":
        return bool(info.get("success", False))
    backward = getattr(env, "backward_success", None)
    return bool(backward()) if callable(backward) else expert.done(env)


def _as_dict(observation: Any) -> dict[str, np.ndarray]:
    if isinstance(observation, dict):
        return observation
    return {"state": np.asarray(observation, dtype=np.float32)}


# ---------------------------------------------------------------------- import-earl
def import_earl(path: Path, task: str, direction: str, *, render_pixels: bool = False,
                image_size: int = 84, seed: int = 0) -> Demos:
    """Reads EARL's demo file and returns it as :class:`Demos` (state, or re-rendered
    pixels through the task's ``set_from_earl_observation``). Backward demos of a task whose
    state carries a goal are relabelled to its forward goals first
    (:func:`simulation.earl_import.relabel_goals`: one copy of each episode per goal). Blocks
    while rendering.

    Raises:
        EarlImportError: for unreadable or unsafe files.
        CliError: when pixels are asked for and the task cannot set its state from EARL's
            vector, or the vector length does not match the task.
    """
    arrays = load_earl_arrays(path)
    info = task_info(task)
    dim = arrays["observations"].shape[-1]
    if arrays["observations"].ndim != 2 or dim != info.state_dim:
        raise CliError(f"{path}: observations are {arrays['observations'].shape[1:]}, task {task} "
                       f"expects ({info.state_dim},)")
    notes = {"original": str(path)}
    if direction == "backward" and info.state_goals:
        notes["earl_goals"] = json.dumps(episode_goals(arrays, len(info.state_goals[0])))
        arrays = relabel_goals(arrays, info.state_goals)
        notes["goal"] = (f"relabelled to the twin's {len(info.state_goals)} forward goal(s), one copy of "
                         "each episode per goal, as MEDAL does; EARL's own goal per episode: earl_goals")
    if not render_pixels:
        meta = DemoMeta(task=task, direction=direction, obs_mode="state", source="earl", notes=notes)
        return earl_to_demos(arrays, meta)
    env = make(task, obs="pixels", image_size=image_size)
    setter = getattr(env, "set_from_earl_observation", None)
    if not callable(setter):
        env.close()
        raise CliError(f"task {task} has no set_from_earl_observation(): cannot re-render pixels from EARL states")
    try:
        env.reset(seed=seed)

        def observe(vector: np.ndarray) -> dict[str, np.ndarray]:
            setter(np.asarray(vector, dtype=np.float64))
            # the base class's observation assembly is the single source of the pixel layout
            return env._observation()

        cameras = tuple(env.cameras) + tuple(env._task_extra_image_names())
        meta = DemoMeta(task=task, direction=direction, obs_mode="pixels", cameras=cameras,
                        image_size=image_size, source="earl", notes=notes)
        return earl_to_demos(arrays, meta, observe)
    finally:
        env.close()


# ---------------------------------------------------------------------- inspect
def describe(demos: Demos) -> list[str]:
    """Returns human-readable lines summarising ``demos``."""
    meta = demos.meta
    lengths = [stop - start - 1 for start, stop in demos.episode_bounds()]
    lines = [f"task {meta.task}, direction {meta.direction}, obs {meta.obs_mode}, source {meta.source}, "
             f"created {meta.created}, format v{meta.version}",
             f"{demos.num_episodes} episodes, {demos.num_transitions} transitions, {demos.num_steps} rows; "
             f"success {int(demos.episode_success.sum())}/{demos.num_episodes}",
             f"episode lengths (transitions): min {min(lengths)}, mean {np.mean(lengths):.1f}, max {max(lengths)}"]
    for key, array in sorted(demos.observations.items()):
        lines.append(f"  obs/{key}: {array.dtype.name} {tuple(array.shape)}")
    lines.append(f"  actions: {demos.actions.dtype.name} {tuple(demos.actions.shape)} "
                 f"in [{demos.actions.min():.3f}, {demos.actions.max():.3f}]")
    lines.append(f"  rewards: sum {demos.rewards.sum():.1f}; terminals {int(demos.terminals.sum())}")
    for number, ((start, stop), ok) in enumerate(zip(demos.episode_bounds(), demos.episode_success)):
        lines.append(f"  episode {number}: rows {start}-{stop - 1}, {stop - start - 1} steps, "
                     f"{'success' if ok else 'failure'}")
    return lines


def contact_sheet(demos: Demos, out: Path, *, camera: str | None = None, frames: int = 8,
                  max_episodes: int = 8) -> Path:
    """Writes a PNG grid (one row per episode, ``frames`` evenly spaced frames) of a camera.

    Returns the path written. Raises ``CliError`` for state demos or an unknown camera.
    """
    if demos.meta.obs_mode != "pixels":
        raise CliError("contact sheet: these demos have no images (state mode)")
    camera = camera or demos.meta.cameras[0]
    if camera not in demos.observations:
        raise CliError(f"contact sheet: no camera {camera!r}; have {list(demos.meta.cameras)}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bounds = demos.episode_bounds()[:max_episodes]
    figure = Figure(figsize=(1.2 * frames, 1.2 * len(bounds) + 0.3))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(bounds), frames, squeeze=False)
    for row, (start, stop) in enumerate(bounds):
        for col, index in enumerate(np.linspace(start, stop - 1, frames).round().astype(int)):
            axes[row, col].imshow(demos.observations[camera][index].transpose(1, 2, 0))
            axes[row, col].set_axis_off()
            axes[row, col].set_title(f"ep {row} t {index - start}", fontsize=6)
    figure.suptitle(f"{demos.meta.task} {demos.meta.direction} — {camera}", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


# ---------------------------------------------------------------------- argparse
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resetfree-demos", description=doc_help(__doc__)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="record scripted-expert demos")
    gen.add_argument("--task", required=True, help="tabletop, door, peg or cube")
    gen.add_argument("--direction", choices=("forward", "backward"), default="forward")
    gen.add_argument("--episodes", type=int, default=None,
                     help=f"episodes to record (default {EARL_DEFAULT_EPISODES}; cube {CUBE_DEFAULT_EPISODES})")
    gen.add_argument("--obs", choices=("state", "pixels"), default="state")
    gen.add_argument("--out", type=Path, required=True, help="output .npz")
    gen.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise of the expert")
    gen.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    gen.add_argument("--image-size", type=int, default=84)
    gen.add_argument("--split", default=None, help="cube start distribution: id (default) or ood")
    gen.add_argument("--max-steps", type=int, default=None, help="cap per episode (default: eval horizon)")
    imp = sub.add_parser("import-earl", help="convert EARL's demo_data.pkl / .npz")
    imp.add_argument("path", type=Path, help="EARL demo file (.pkl restricted-unpickled, or .npz)")
    imp.add_argument("--task", required=True)
    imp.add_argument("--direction", choices=("forward", "backward"), required=True)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--render-pixels", action="store_true", help="re-render pixel observations from the states")
    imp.add_argument("--image-size", type=int, default=84)
    ins = sub.add_parser("inspect", help="summarise a demo file")
    ins.add_argument("path", type=Path)
    ins.add_argument("--sheet", type=Path, default=None, help="write a contact-sheet PNG of frames")
    ins.add_argument("--camera", default=None, help="camera for the sheet (default: the first)")
    add_record_parser(sub)
    add_lerobot_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "generate":
        episodes = args.episodes or (CUBE_DEFAULT_EPISODES if args.task == "cube" else EARL_DEFAULT_EPISODES)
        split = args.split or ("id" if args.task == "cube" else None)
        demos = generate(args.task, args.direction, episodes=episodes, obs=args.obs, seed=args.seed,
                         noise=args.noise, image_size=args.image_size, split=split, max_steps=args.max_steps)
        save_demos(args.out, demos)
        print(f"wrote {args.out}: {demos.num_episodes} episodes, "
              f"{int(demos.episode_success.sum())} successful, {demos.num_transitions} transitions")
    elif args.command == "record":
        run_record(args)
    elif args.command in ("export", "import", "export-run"):
        print(run_lerobot(args))
    elif args.command == "import-earl":
        demos = import_earl(args.path, args.task, args.direction, render_pixels=args.render_pixels,
                            image_size=args.image_size)
        save_demos(args.out, demos)
        print(f"wrote {args.out}: {demos.num_episodes} episodes, {demos.num_transitions} transitions")
    else:
        demos = load_demos(args.path)
        print("\n".join(describe(demos)))
        if args.sheet is not None:
            print(f"contact sheet: {contact_sheet(demos, args.sheet, camera=args.camera)}")


def main(argv: list[str] | None = None) -> int:
    """Runs ``resetfree-demos``. Returns 0 on success, 1 on a reported error (one line on stderr)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except (ValueError, SimulationError, DemoFormatError, EarlImportError, HardwareError, OSError) as e:
        print(f"resetfree-demos {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
