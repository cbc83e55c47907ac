// placeholder until the password rules module lands
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordRules {
    pub min_length: usize,
    pub max_length: usize,
    pub reject_common: bool,
    pub reject_numeric: bool,
    pub reject_similar: bool,
}
impl Default for PasswordRules {
    fn default() -> Self {
        PasswordRules {
            min_length: 8,
            max_length: 128,
            reject_common: true,
            reject_numeric: true,
            reject_similar: true,
        }
    }
}
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PasswordError {
    #[error("This password is too short. It must contain at least {min} characters.")]
    TooShort { min: usize },
}
impl PasswordError {
    pub fn code(&self) -> &'static str {
        "password_too_short"
    }
}
pub fn validate(
    password: &str,
    _u: &str,
    _e: Option<&str>,
    rules: &PasswordRules,
) -> Result<(), PasswordError> {
    if password.chars().count() < rules.min_length {
        return Err(PasswordError::TooShort {
            min: rules.min_length,
        });
    }
    Ok(())
}
