# Helpers of rules/data.smk (functions and settings; Snakemake's linter keeps them apart from rules).
from vislib.config import dataset_model_classes
from vislib.models.torchvision_models import cached_weights, weights_cache_dir, weights_url

# (mem_mb, runtime in minutes) of the prepare job of real datasets: downloads, extraction, JSON parsing.
PREPARE_RESOURCES = {"coco": (8000, 12 * 60), "vg": (24000, 24 * 60), "imagenet_val": (4000, 3 * 60)}
WEIGHTS_CACHE = str(weights_cache_dir())


def prepare_resources(dataset):
    """(mem_mb, runtime in minutes) of preparing `dataset`."""
    return PREPARE_RESOURCES.get(config["datasets"][dataset]["kind"], (2000, 30))


def pretrained_weights():
    """{file name: url} of the configured torchvision weights that no local cache holds yet."""
    urls = [weights_url(s.get("arch"), s.get("weights")) for s in config["models"].values() if "train" not in s]
    return {os.path.basename(u): u for u in urls if u and cached_weights(u) is None}
