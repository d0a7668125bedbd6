"""`distill serve CONFIG`: the students and the fallback model behind one OpenAI-compatible
endpoint (Ray Serve), every call routed, checked and logged. `distill serve-replay`: a
conversion's held-out calls through the same routing, and the calibration of its thresholds."""

from __future__ import annotations

import os
import time

import typer

from distill.cli.app import app, console, err


@app.command("serve")
def serve_command(
    config: str = typer.Argument(..., metavar="CONFIG", help="the serving config (YAML; docs/serving.md)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; 0.0.0.0 for every interface"),
    port: int = typer.Option(8000, "--port", help="port to listen on"),
    ray_address: str = typer.Option(None, "--ray-address", help="a running Ray cluster (default: a local Ray)"),
):
    """Serve the students behind one OpenAI-compatible endpoint: each call goes to the student that
    owns its cluster, or to the fallback model; blocks until Ctrl-C."""
    from distill.serve.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    missing = [(key, env) for key, env in (("api_key_env", cfg.api_key_env),
                                           ("fallback.api_key_env", cfg.fallback.api_key_env)) if env and not os.environ.get(env)]
    for key, env in missing:
        err.print(f"{config}: {key}: names {env}, which is not set; export it first", highlight=False)
    if missing:
        raise typer.Exit(2)
    from distill.serve.app import start, stop

    console.print(f"starting {len(cfg.students)} student(s) ({', '.join(s.name for s in cfg.students) or 'none'}) "
                  f"and the router; the fallback is {cfg.fallback.model} at {cfg.fallback.base_url}", highlight=False)
    started = time.time()
    url = start(cfg, host, port, ray_address)
    console.print(f"serving at {url} (ready in {time.time() - started:.0f} s); served calls logged to "
                  f"{cfg.log_dir or 'nowhere (log_dir: null)'}; Ctrl-C to stop", highlight=False)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping", highlight=False)
    finally:
        stop()


@app.command("serve-replay")
def serve_replay_command(
    conversion: str = typer.Argument(..., metavar="CONVERSION_DIR", help="a conversion's folder (distill usage "
                                     "convert --out DIR): its clusters' heldout.jsonl are replayed"),
    config: str = typer.Option(..., "--config", metavar="CONFIG", help="the serving config (YAML; docs/serving.md)"),
    limit: int = typer.Option(None, "--limit", metavar="N", help="at most N held-out calls per cluster"),
    keep: float = typer.Option(0.9, "--keep", metavar="X", help="calibration target: the min_confidence that sends "
                               "the fewest calls to the LLM while keeping X of its accuracy"),
    max_llm_share: float = typer.Option(None, "--max-llm-share", metavar="Y", help="calibration target: the "
                                        "min_confidence with the best accuracy sending at most Y of the calls to the LLM"),
    hardware_usd_per_hour: float = typer.Option(None, "--hardware-usd-per-hour", help="the students' hardware price "
                                                "(default: convert's setting)"),
    prices: str = typer.Option(None, "--prices", metavar="FILE", help="the logged models' price table (default: "
                               "convert's)"),
    as_json: bool = typer.Option(False, "--json", help="print replay.json's summary as JSON"),
):
    """Replay a conversion's held-out logged calls through the router (in-process, the students on
    vLLM, the logged model as the fallback): accuracy vs the LLM-only answers, the students' share,
    cost per 1,000 calls, latency, and the calibration of min_confidence. Writes replay.json and
    replay.html into CONVERSION_DIR."""
    import json

    from distill.serve.config import ConfigError, load_config
    from distill.serve.replay import ReplayError, Settings, replay_conversion
    from distill.serve.replay_report import summary_lines
    from distill.usage.prices import PriceError

    for name, value in (("--keep", keep), ("--max-llm-share", max_llm_share)):
        if value is not None and not 0 <= value <= 1:
            err.print(f"{name} {value}: give a share between 0 and 1, e.g. 0.9", highlight=False)
            raise typer.Exit(2)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    settings = Settings(limit=limit, hardware_usd_per_hour=hardware_usd_per_hour, prices=prices, keep=keep,
                        max_llm_share=max_llm_share)
    say = (lambda _: None) if as_json else (lambda line: console.print(line, markup=False, highlight=False))
    try:
        result = replay_conversion(conversion, cfg, settings, say=say)
    except (ReplayError, PriceError) as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("calls", "config")}, indent=1, default=str))
        return
    for line in summary_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"replay.json and replay.html written to {conversion}", markup=False, highlight=False)
