# Raw data: the embedded mini benchmark is generated; real datasets must exist under data_root/raw.


rule synth:
    output:
        gta5=directory(f"{RAW}/mini_gta5"),
        synthia=directory(f"{RAW}/mini_synthia"),
        cityscapes=directory(f"{RAW}/mini_cityscapes"),
    params:
        out=lambda wildcards, output: Path(output.gta5).parent,
    log:
        "logs/synth.log",
    conda:
        ENV
    threads: resource("synth", "threads")
    resources:
        gpu=resource("synth", "gpu"),
        mem_mb=resource("synth", "mem_mb"),
        runtime=resource("synth", "runtime"),
    shell:
        "hqtd synth --out {params.out} > {log} 2>&1"


# Only the manifest (written last) is declared, not the folder: Snakemake deletes the declared
# outputs of a failed, killed or rerun job, and `hqtd prepare` reuses every converted file it
# finds complete and up to date, so `--rerun-incomplete` after a crash resumes the conversion.
rule prepare:
    input:
        raw=f"{RAW}/{{dataset}}",
    output:
        manifest=prepared("{dataset}"),
    params:
        out=lambda wildcards, output: Path(output.manifest).parent,
        format=lambda wildcards: GRID.datasets[wildcards.dataset],
        args=lambda wildcards: shlex.join(GRID.prepare_args[wildcards.dataset]),
    log:
        "logs/prepare_{dataset}.log",
    conda:
        ENV
    threads: resource("prepare", "threads")
    resources:
        gpu=resource("prepare", "gpu"),
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
    shell:
        "hqtd prepare {params.format} --root {input.raw} --out {params.out}"
        " --workers {threads} {params.args} > {log} 2>&1"
