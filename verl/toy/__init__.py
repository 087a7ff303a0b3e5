"""What the project builds for itself to run on a CPU with nothing downloaded: tiny random models
(`tiny_model`), the synthetic tasks (`synthetic`: the recipe's shapes task; `scenes`: the transfer
task) and the build stamps that say which arguments built a folder. Above the library's data
layer (it uses its prompt format), below the trainer (the dry run draws its fixture rows here)."""
