-- tpe sweeps: the search (sweep::TpeSearch as JSON), and per trial whether its values are
-- still to be suggested and what the suggestion was based on (JSON).
ALTER TABLE sweeps ADD COLUMN tpe TEXT;
ALTER TABLE trials ADD COLUMN awaiting_suggestion INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN suggestion_basis TEXT;
