"""`distill serve CONFIG`: the students and the fallback model behind one OpenAI-compatible
endpoint (Ray Serve), every call routed, checked and logged."""

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
