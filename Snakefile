# The experiment DAG of params/grid.yaml: synth -> prepare -> train -> evaluate -> tables, figures.
#   snakemake --cores 2                                  # the default grid (demo), mini benchmark
#   snakemake --cores 8 --config grid=paper data_root=/path/to/data --use-conda
# The rules live in workflow/; this file adds the default target.


include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        TABLES,
        FIGURES,
