-- trials.data_preview: training images of each class as the model saw them, and the
-- augmentation preview (cnnd_core::data_preview::DataPreview as JSON). NULL until the first
-- epoch's report brings it, and for trials recorded before previews existed.
ALTER TABLE trials ADD COLUMN data_preview TEXT;
