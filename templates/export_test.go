package templates

// GoNameForTest exposes goName to the external tests.
var GoNameForTest = goName
