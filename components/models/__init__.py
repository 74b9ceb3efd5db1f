"""Models: the VLM (HVP, per-task projectors), its tokenizer, collation and generation, the VQ image tokenizer.

Import the submodule you need; nothing is re-exported here, so importing one part does not load the others::

    from components.models.vlm import MedVLM, VLMArgs, build_vlm
    from components.models.tokenizer import train_tokenizer, add_image_code_tokens, load_tokenizer, save_tokenizer
    from components.models.collate import VLMCollator, make_image_loader
    from components.models.generate import answer_questions, generate_image_codes, codes_from_tokens
    from components.models.memory import enable_gradient_checkpointing, step_memory      # issue 20
    from components.models.quantize import check_quantize, quantize_language_model      # QLoRA (bitsandbytes)
"""
