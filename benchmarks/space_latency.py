"""Latency of the Space on the real celebahq-256 architecture (random weights), served by the app on this machine.

    python benchmarks/space_latency.py --repeats 2

Builds google/ddpm-celebahq-256's UNet twice from its configuration (`celebahq_throughput.build_random_celebahq`,
113.67 M parameters, no download): a "fine-tuned" model whose card names the other as its base. The app serves
it with its own start-up timing and fitted defaults; gradio_client submits a default request (nothing but the
defaults) and the script records when the first fine-tuned/base pair arrives and when the request ends. Then the
bare diffusers pipelines sample the same images (each seed alone, the same precision) and the ratio of the two
times is the app's overhead. The served JPEGs are checked to be `encode_jpeg` of the bare pipelines' images.
Each repeat runs both, one after the other. On a shared machine the wall times swing with the other users'
load, so the process's CPU seconds (all its threads: the app's server, its sampler and the client) are given
too: their ratio is the overhead that other processes cannot fake.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from celebahq_throughput import build_random_celebahq
from diffusers import UNet2DModel
from gradio_client import Client
from huggingface_hub import ModelCard, ModelCardData

from ddpo_hub.space.app import build_demo, match_threads
from ddpo_hub.space.serving import sampling_dtype
from ddpo_hub.training.jpeg import encode_jpeg
from ddpo_hub.training.pipelines import build_pipeline, load_unet_and_scheduler_config


def build_models(scratch: Path) -> tuple[Path, Path]:
    """Two random-weight celebahq-256 pipelines; the second's card names the first as its base."""
    torch.manual_seed(0)
    base = build_random_celebahq(scratch / "celebahq-base")
    torch.manual_seed(1)
    finetuned = build_random_celebahq(scratch / "celebahq-finetuned")
    card = ModelCard.from_template(ModelCardData(base_model=str(base)), template_str="---\n{{ card_data }}\n---\n")
    card.save(finetuned / "README.md")
    return finetuned, base


def app_request(client: Client) -> tuple[float, float, float, list]:
    """(seconds to the first fine-tuned/base pair, seconds to the end, CPU seconds, result) of a default request."""
    cpu = time.process_time()
    start = time.perf_counter()
    job = client.submit(api_name="/generate")
    first_pair = None
    while not job.done():
        if first_pair is None and any(len(gallery) >= 2 for gallery, _, _ in job.outputs()):
            first_pair = time.perf_counter() - start
        time.sleep(0.05)
    result = job.result()
    total = time.perf_counter() - start
    return first_pair if first_pair is not None else total, total, time.process_time() - cpu, result


def bare_pipelines(folders: list[Path], scheduler: str, steps: int, seeds: list[int]) -> tuple[float, float, list]:
    """Seconds and CPU seconds the stock diffusers pipelines take for the same images (each seed alone, as the
    app samples; the first pass of each model warms up outside the timing, as the app's start-up does)."""
    pipelines = []
    for folder in folders:
        unet, scheduler_config = load_unet_and_scheduler_config(folder)
        pipeline = build_pipeline(unet.eval(), scheduler_config, scheduler)
        pipeline.set_progress_bar_config(disable=True)
        pipelines.append(pipeline)
    dtype = sampling_dtype(pipelines[0].unet, torch.device("cpu"))
    images = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        for pipeline in pipelines:
            pipeline(batch_size=1, num_inference_steps=1)
    cpu = time.process_time()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        for seed in seeds:
            for pipeline in pipelines:  # the app's order: a seed's fine-tuned image, then its base's
                generator = torch.Generator().manual_seed(seed)
                images.append(pipeline(batch_size=1, generator=generator, num_inference_steps=steps).images[0])
    return time.perf_counter() - start, time.process_time() - cpu, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="app request + bare pipelines, this many times")
    args = parser.parse_args()
    threads = match_threads()

    with tempfile.TemporaryDirectory() as scratch:
        finetuned, base = build_models(Path(scratch))
        started = time.perf_counter()
        demo = build_demo(str(finetuned), device=torch.device("cpu"), examples_cache="lazy")
        demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        startup = time.perf_counter() - started
        try:
            client = Client(demo.local_url, download_files=str(Path(scratch) / "downloads"), verbose=False)
            defaults = {
                p["parameter_name"]: p["parameter_default"]
                for p in client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"][
                    "parameters"
                ]
            }
            scheduler, steps, num_images = (
                defaults["scheduler"],
                defaults["num_inference_steps"],
                defaults["num_images"],
            )
            seeds = list(range(defaults["seed"], defaults["seed"] + num_images))
            unet = UNet2DModel.from_pretrained(finetuned, subfolder="unet")
            print(
                f"celebahq-256 architecture, {unet.num_parameters() / 1e6:.2f} M parameters, {threads} torch threads, "
                f"precision {sampling_dtype(unet, torch.device('cpu'))}; app start-up (load both, time a pass) "
                f"{startup:.1f} s; defaults: {scheduler} {steps} steps, {num_images} images, compared with the base"
            )
            print(
                "| repeat | first pair (s) | app request (s) | bare pipelines, same images (s) | ratio "
                "| app CPU (s) | bare CPU (s) | CPU ratio |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for repeat in range(1, args.repeats + 1):
                first_pair, total, app_cpu, result = app_request(client)
                bare, bare_cpu, images = bare_pipelines([finetuned, base], scheduler, steps, seeds)
                served = [Path(item["image"]).read_bytes() for item in result[0]]
                if served != [encode_jpeg(image) for image in images]:
                    raise SystemExit("The app served other images than the bare pipelines sampled.")
                print(
                    f"| {repeat} | {first_pair:.1f} | {total:.1f} | {bare:.1f} | {total / bare:.3f} "
                    f"| {app_cpu:.1f} | {bare_cpu:.1f} | {app_cpu / bare_cpu:.3f} |",
                    flush=True,
                )
        finally:
            demo.close()


if __name__ == "__main__":
    main()
