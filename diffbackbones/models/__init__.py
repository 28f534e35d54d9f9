"""Model facts: the zoo as data, one module per denoiser family, the activation catalog, weight loading.

Layer: the bottom of the diffusion stack; imports only `utils`. The backbone, tasks and integrations
ask these modules about a model and never branch on its name.
"""
