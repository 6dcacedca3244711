# CLIP-guided text-to-image (paper Sec. 5.4, Figure 7): grids per prompt, CLIP score per step for
# the linear and the sine schedule, and the recurrent comparison with wall time. GPU and
# downloads (ADM-256, CLIP ViT-L/14@336); not part of `all`:
#   snakemake --cores all text2image [--config text2image_config=my_prompts.yaml]

rule text2image:
    input:
        config=config.get("text2image_config", "config/clip_text2image.yaml"),
    output:
        directory(f"{config['results']}/clip_text2image"),
    params:
        checkpoints=CHECKPOINTS,  # where the diffusion checkpoint is fetched to and verified against
        library=LIBRARY,
    log:
        f"{config['results']}/logs/text2image.log",
    resources:
        gpu=1,
    conda: CONDA_ENV
    script:
        "../scripts/text2image.py"


# Figure 7 on a diffusers text-to-image pipeline (SDXL by default): CLIP score of the decoded x̂0
# per step, unguided vs linear vs sine schedule, with bootstrap intervals over prompts × seeds
# (offshelf.integrations.clip_schedules, docs/diffusers.md). GPU and downloads for the shipped
# config; offline on tiny pipelines in tests/workflow/test_text2image_diffusers.py. Not part of `all`:
#   snakemake --cores all text2image_diffusers [--config text2image_diffusers_config=my.yaml]
rule text2image_diffusers:
    input:
        config=config.get("text2image_diffusers_config", "config/text2image_diffusers.yaml"),
    output:
        directory(f"{config['results']}/text2image_diffusers"),
    params:
        library=LIBRARY,
    log:
        f"{config['results']}/logs/text2image_diffusers.log",
    resources:
        gpu=1,
    conda: CONDA_ENV
    script:
        "../scripts/text2image_diffusers.py"
