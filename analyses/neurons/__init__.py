"""The neuron atlas: a page per neuron of the collected layers, searchable, static (`atlas.build_atlas`).

`facts` computes every fact of a layer's neurons at once, `atlas` writes them as the data files of
docs/atlas-format.md beside the viewer page `web/index.html`, and `fired` runs a model over a text and lists the
neurons that fire on each token, with their atlas labels. `related` finds each neuron's related neurons through
the weights; it and the facts' update scores compute on jax's default device through `products`.
"""
