"""The processing, tta and mask_classes keys: their choices, and cache_latents + keep_aspect refused for training
only."""

import pytest

from utils.config import ConfigError, parse_config


def parse(*argv: str, training: bool = False):
    args, _ = parse_config(list(argv), training=training)
    return args


def test_defaults_change_nothing_for_existing_runs():
    args = parse()
    assert (args.processing, args.tta) == ("square", "none")
    assert (parse("--processing", "keep_aspect").processing, parse("--tta", "hflip").tta) == ("keep_aspect", "hflip")


@pytest.mark.parametrize("key, value", [("processing", "letterbox"), ("tta", "vflip"), ("mask_classes", "stuff")])
def test_other_values_are_refused_naming_the_choices(key, value):
    with pytest.raises(ConfigError, match=rf"'{key}' = '{value}' is not one of"):
        parse(f"--{key}", value)


def test_cache_latents_with_keep_aspect_is_refused_for_training_with_the_fix():
    flags = ("--cache_latents", "--processing", "keep_aspect")
    with pytest.raises(ConfigError, match="cache_latents with processing = keep_aspect is not supported") as error:
        parse(*flags, training=True)
    assert "set cache_latents false or processing square" in str(error.value)
    parse("--cache_latents", training=True)  # square: cached as before
    parse("--processing", "keep_aspect", training=True)  # uncached: fine
    # Evaluation never reads cache_latents: a cached run's config.yaml still evaluates with keep_aspect.
    assert parse(*flags).processing == "keep_aspect"


def test_things_stuff_trains_and_evaluates():
    assert parse("--mask_classes", "things_stuff", training=True).mask_classes == "things_stuff"
    assert parse("--mask_classes", "things_stuff", "--cache_latents", training=True).cache_latents
