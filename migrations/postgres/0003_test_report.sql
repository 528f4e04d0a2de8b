-- trials.test_report: the test pass class by class (cnnd_core::test_report::TestReport as
-- JSON): confusion matrix, class names, the first misclassified images. NULL before it ran.
ALTER TABLE trials ADD COLUMN test_report TEXT;
